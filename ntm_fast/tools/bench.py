"""`ntm-fast bench`: every available backend and `torch.compile(reference)` on the same inputs, side by side.

Contenders: the backends that run on the device (`available_backends`; the Triton interpreter on CPU is
never one) plus ``compile``, the reference ops under `torch.compile` (for the whole step: the reference
model with its `NTMCell` compiled, one graph per time step reused over the sequence). For the whole step, a
backend that runs the whole sequence as one autograd node on the device (`cpp` on CPU, `triton` on CUDA;
model/fused.py) has a second contender, ``<backend>-per-step``: the same model with `fuse_sequence = False`,
run one time step at a time, so the sequence node and the per-step path are timed side by side. Each step
row says what the model ran as (`runs_as`: sequence node, step nodes or per-op).

Cases: each op (`address` over all R+W heads, `read`, `write`, `memory_step`) and the whole training step
(copy task at a fixed length, so `torch.compile` compiles once), forward (no grad) and forward+backward
(the op's input gradients for fixed random cotangents; for the step: forward, loss, backward, gradient
clipping and the RMSprop update), over every batch size × slot count asked for.

Each contender runs in its own process (on the CPU, eager ops ran ~16× slower in a process where
`torch.compile` had run), checks its outputs (and gradients) against the reference on the same inputs,
and is timed only if they agree: warm-up calls, then the median of repetitions; on CUDA,
`triton.testing.do_bench` (CUDA events). The same `measure` and workload builders serve `ntm-fast
profile` and the pytest-benchmark suite in `benchmarks/`.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..ops import ReadHeads, WriteHeads, reference
from ..ops.dispatch import BACKENDS, available_backends, resolved_ops, unavailable_reason
from .options import add_model_options

OPS = ("address", "read", "write", "memory_step")
STEP = "step"
MODES = ("fwd", "fwd+bwd")
COMPILE = "compile"  # the contender torch.compile(reference)
COMPILE_CHOICES = ("off", "ops", "all")  # which cases the compile contender runs
PER_STEP = "-per-step"  # suffix of the contender running a sequence-node backend's model step by step
# Agreement with the reference required before timing (float32; the step accumulates over 2L+1 steps).
TOLERANCE = {"op": dict(rtol=1e-4, atol=1e-5), STEP: dict(rtol=1e-3, atol=1e-4)}
# An op contender further than that from the float32 reference still agrees when it is as exact as the
# reference itself: off the float64 reference by at most this many times the float32 reference's own error
# (plus the tolerance), the rule of tests/test_backend_equivalence.py. At large N the float32 reference's own
# error exceeds the fixed tolerance (memory_step fwd+bwd at B=1024, N=1024: up to 3.5e-5 in a gradient), and
# a contender as exact as it was refused (cuda on an H200, 1.5e-5 off the float32 reference).
REFERENCE_ERROR_FACTOR = 4
CSV_FIELDS = ("op", "mode", "batch", "slots", "contender", "status", "median_ms", "seq_per_s", "speedup",
              "vs_per_step", "runs_as", "compile_s", "reps", "max_error", "threads", "rounds")


@dataclass(frozen=True)
class Case:
    op: str  # one of OPS or STEP
    mode: str  # one of MODES
    batch: int
    slots: int


@dataclass(frozen=True)
class Settings:
    """What stays fixed over the sweep: the model shape and the timing policy."""

    width: int = 20
    read_heads: int = 1
    write_heads: int = 1
    shift_range: int = 1
    controller_size: int = 100
    length: int = 20  # copy-task sequence length of the whole-step cases (2L+1 time steps)
    device: str = "cpu"
    warmup: int = 2
    reps: int = 10
    budget_s: float = 1.0  # stop repeating after this long (but never below 3 repetitions)
    threads: int | None = None
    seed: int = 0
    compile_backend: str = "inductor"  # torch.compile backend of the compile contender
    # False: a fresh static-shape compilation per case; True: dynamic shapes, one compilation per op and mode
    # (and for the step, per cell graph) serves every case of the process
    compile_dynamic: bool = False


class Disagreement(RuntimeError):
    """A contender's outputs or gradients differ from the reference's on the same inputs."""


# ---- timing: the one helper every benchmark and the profiler use ------------------------------------------
@dataclass(frozen=True)
class Timing:
    median_s: float
    reps: int | None  # None: triton.testing.do_bench chose


def measure(fn: Callable, device, *, warmup: int = 2, reps: int = 10, budget_s: float = 1.0) -> Timing:
    """Median wall time of `fn()`.

    CUDA: `triton.testing.do_bench` (CUDA events, its own warm-up and repetition count). CPU: `warmup`
    calls, then up to `reps` timed calls, stopping early once `budget_s` has passed (at least 3 calls).
    """
    if torch.device(device).type == "cuda":
        import triton.testing

        return Timing(triton.testing.do_bench(fn, return_mode="median") / 1e3, None)
    for _ in range(warmup):
        fn()
    times, deadline = [], time.perf_counter() + budget_s
    while len(times) < reps and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), len(times))


def synchronized(fn: Callable, device) -> Callable:
    """`fn` followed by a CUDA synchronize on CUDA devices (for timers that do not use CUDA events)."""
    if torch.device(device).type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


# ---- workloads ---------------------------------------------------------------------------------------------
def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def forward_only(fn: Callable, inputs) -> Callable:
    """A callable running `fn(*inputs)` without autograd; returns the outputs as a tuple."""

    def run():
        with torch.no_grad():
            return _as_tuple(fn(*inputs))

    return run


def forward_backward(fn: Callable, inputs, params=(), seed: int = 0) -> Callable:
    """A callable running `fn(*inputs)` and its backward for fixed random cotangents (drawn on the first
    call from `seed`, in float64 then rounded: the same in every dtype); returns the outputs followed by the
    gradients of `inputs` and `params`."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    wrt = leaves + list(params)
    cotangents = []

    def run():
        outs = _as_tuple(fn(*leaves))
        if not cotangents:
            gen = torch.Generator().manual_seed(seed)
            cotangents.extend(torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs)
        return outs + torch.autograd.grad(outs, wrt, cotangents, materialize_grads=True)

    return run


def op_inputs(op: str, batch: int, slots: int, s: Settings) -> list:
    """The flat input tensors of `op` (see OP_CALLS), with head parameters activated by the model's own
    `NTMCell.head_parameters` from a random controller output. Seeded: every contender gets the same.
    Fresh copies on `s.device` of the last draw, which is kept (on the CPU): the reference check and the
    other ops and contenders at the same sizes do not draw again."""
    drawn = _drawn_inputs(batch, slots, s.read_heads, s.write_heads, s.width, s.shift_range, s.controller_size,
                          s.seed)
    return [x.to(s.device, copy=True) for x in _op_inputs_of(op, *drawn, s.read_heads)]


@functools.lru_cache(maxsize=1)
def _drawn_inputs(batch, slots, R, W, M, S, controller_size, seed) -> tuple:
    """(read heads, write heads, memory, previous weightings) on the CPU, as drawn for `op_inputs`."""
    from ..model import NTMCell

    gen = torch.Generator().manual_seed(seed)
    N = slots
    with torch.random.fork_rng(devices=[]):  # the layer initialisation draws from torch's generator
        torch.manual_seed(seed)
        cell = NTMCell(1, 1, controller="feedforward", controller_size=controller_size, memory_slots=N,
                       memory_width=M, read_heads=R, write_heads=W, shift_range=S)
    with torch.no_grad():
        rh, wh = cell.head_parameters(torch.randn(batch, controller_size, generator=gen))
    memory = torch.randn(batch, N, M, generator=gen) * cell.memory_scale * 4
    w_prev = torch.softmax(torch.randn(batch, R + W, N, generator=gen) * 3, dim=-1)
    return rh, wh, memory, w_prev


def _op_inputs_of(op, rh, wh, memory, w_prev, R) -> list:
    if op == "address":  # all R+W heads in one call, as memory_step addresses them
        inputs = [memory, *(torch.cat([a, b], dim=1) for a, b in zip(rh, wh[:5])), w_prev]
    elif op == "read":
        inputs = [memory, w_prev[:, :R]]
    elif op == "write":
        inputs = [memory, w_prev[:, R:], wh.erase, wh.add]
    else:
        inputs = [memory, *rh, *wh, w_prev[:, :R], w_prev[:, R:]]
    return [x.contiguous() for x in inputs]


# How each op is called on an ops object (a backend module or the compiled reference) with flat inputs.
OP_CALLS = {
    "address": lambda ops, *a: ops.address(*a),
    "read": lambda ops, *a: ops.read(*a),
    "write": lambda ops, *a: ops.write(*a),
    "memory_step": lambda ops, *a: ops.memory_step(a[0], ReadHeads(*a[1:6]), WriteHeads(*a[6:13]), *a[13:]),
}


class _CompiledReference:
    """The reference ops, each under torch.compile."""

    def __init__(self, backend: str = "inductor", dynamic: bool | None = None):
        for op in OPS:
            setattr(self, op, torch.compile(getattr(reference, op), backend=backend, dynamic=dynamic))


@functools.lru_cache(maxsize=None)
def _dynamic_compiled_reference(backend: str) -> _CompiledReference:
    """One dynamic-shape compiled reference per backend, kept over the cases of a process."""
    return _CompiledReference(backend, dynamic=True)


def training_step(trainer, batch) -> tuple:
    """(train_step, gradients, update) for `trainer`'s model and optimizer on a fixed batch.

    `gradients()` runs forward, loss and backward and returns (loss, *parameter gradients); `update()`
    clips the gradients and steps the optimizer; `train_step()` does both.
    """
    model, task, params = trainer.model, trainer.task, list(trainer.model.parameters())

    def gradients():
        model.zero_grad(set_to_none=True)
        loss = task.loss(model(batch.inputs), batch)
        loss.backward()
        return (loss.detach(), *(p.grad for p in params))

    def update():
        torch.nn.utils.clip_grad_value_(params, trainer.config.clip)
        trainer.optimizer.step()

    def train_step():
        gradients()
        update()

    return train_step, gradients, update


def split_contender(contender: str) -> tuple:
    """(backend, per_step): 'triton-per-step' -> ('triton', True), 'triton' -> ('triton', False)."""
    if contender.endswith(PER_STEP):
        return contender[:-len(PER_STEP)], True
    return contender, False


def has_sequence_node(backend: str, device) -> bool:
    """Whether `backend` runs a whole sequence as one autograd node on `device`'s tensors (model/fused.py)."""
    device_type = torch.device(device).type
    if unavailable_reason(backend, device_type) is not None:
        return False
    kernels = getattr(resolved_ops(backend, device_type), "kernels", None)
    return device_type in getattr(kernels, "FUSED_SEQUENCE_DEVICES", ())


def runs_as(model, x) -> str:
    """What `model(x)` (x [T, B, X]) runs as: 'sequence node' (one autograd node for all T steps), 'step
    nodes' (one per time step) or 'per-op' (the backend's ops, one call each)."""
    from ..model import fused

    if model.fuse_sequence and fused.sequence_usable(model.cell, x[0]):
        return "sequence node"
    return "step nodes" if fused.usable(model.cell, x[0]) else "per-op"


def step_trainer(contender: str, batch_size: int, device, *, task: str = "copy", model: dict, seed: int = 0,
                 compile_options: dict | None = None):
    """A `Trainer` (seeded: the same initial weights for every contender) whose model uses `contender`
    (a backend, ``compile``, or ``<backend>-per-step``: that backend's model with `fuse_sequence = False`);
    `model` holds NTM keyword arguments; `compile_options` those of the compile contender's `cell.compile`."""
    from .train import TrainConfig, Trainer

    backend, per_step = split_contender(contender)
    config = TrainConfig(task=task, batch_size=batch_size, seed=seed, device=str(device), progress=False,
                         backend="reference" if contender == COMPILE else backend, model=model,
                         out_dir=os.path.join(tempfile.gettempdir(), "ntm-fast-bench"))  # never written
    trainer = Trainer(config)
    trainer.model.fuse_sequence = not per_step
    if contender == COMPILE:
        trainer.model.cell.compile(**(compile_options or {}))
    return trainer


def step_case(contender: str, case: Case, s: Settings) -> tuple:
    """(trainer, copy-task batch [T, B, X]) of a whole-step case, seeded."""
    model = dict(controller_size=s.controller_size, memory_slots=case.slots, memory_width=s.width,
                 read_heads=s.read_heads, write_heads=s.write_heads, shift_range=s.shift_range)
    trainer = step_trainer(contender, case.batch, s.device, model=model, seed=s.seed,
                           compile_options=dict(backend=s.compile_backend, dynamic=s.compile_dynamic or None))
    return trainer, trainer.task.sample(case.batch, s.length, torch.Generator().manual_seed(s.seed)).to(s.device)


def workload(contender: str, case: Case, s: Settings) -> tuple:
    """(timed, check) callables for `contender` on `case`: `timed()` is what is measured, `check()` returns
    the tensors compared with the reference (outputs; for fwd+bwd also gradients)."""
    if case.op != STEP and split_contender(contender)[1]:
        raise ValueError(f"contender {contender!r} times the whole step only, not {case.op!r}")
    if case.op == STEP:
        trainer, batch = step_case(contender, case, s)
        if case.mode == "fwd":
            def forward_loss(x):
                logits = trainer.model(x)
                return logits, trainer.task.loss(logits, batch)

            check = forward_only(forward_loss, [batch.inputs])
            return check, check
        return training_step(trainer, batch)[:2]
    if contender == COMPILE:
        ops = (_dynamic_compiled_reference(s.compile_backend) if s.compile_dynamic
               else _CompiledReference(s.compile_backend))
    else:
        ops = resolved_ops(contender, torch.device(s.device).type)
    check = _op_run(ops, case, op_inputs(case.op, case.batch, case.slots, s))
    return check, check


def _op_run(ops, case: Case, inputs) -> Callable:
    """A callable running `case`'s op on `ops` (a backend module or the compiled reference) with `inputs`:
    forward only, or forward and backward, as `case.mode` says."""
    wrap = forward_only if case.mode == "fwd" else forward_backward
    return wrap(lambda *a: OP_CALLS[case.op](ops, *a), inputs)


def _max_error(got, want, rtol, atol) -> tuple:
    """(largest absolute difference, whether every tensor agrees within the tolerance)."""
    worst, ok = 0.0, len(got) == len(want)
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return float("inf"), False
        g, w = g.detach(), w.detach()
        diff = (g.float() - w.float()).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        ok = ok and bool(torch.allclose(g, w, rtol=rtol, atol=atol))
    return worst, ok


def as_exact_as_reference(got, want, oracle, rtol, atol) -> bool:
    """Whether each of `got` is off `oracle` (the float64 reference) by at most REFERENCE_ERROR_FACTOR times
    the largest error of `want` (the float32 reference) there, plus `atol` and `rtol`·|oracle|."""
    if not len(got) == len(want) == len(oracle):
        return False
    for g, w, o in zip(got, want, oracle):
        if not g.shape == w.shape == o.shape:
            return False
        o = o.detach()
        own_error = float((w.detach().double() - o).abs().max()) if o.numel() else 0.0
        bound = atol + REFERENCE_ERROR_FACTOR * own_error + rtol * o.abs()
        if not bool(((g.detach().double() - o).abs() <= bound).all()):  # NaN anywhere: False
            return False
    return True


def _float64_reference(case: Case, s: Settings) -> tuple:
    """The reference's outputs (and gradients) on `case`'s inputs in float64: the oracle of the op cases."""
    return _op_run(reference, case, [x.double() for x in op_inputs(case.op, case.batch, case.slots, s)])()


def prepare(contender: str, case: Case, s: Settings) -> tuple:
    """(timed callable, first-call seconds, max abs error vs the reference) for a contender that agrees
    with the reference on `case`; raises Disagreement otherwise."""
    if contender == COMPILE and not s.compile_dynamic:
        torch._dynamo.reset()  # a fresh compilation per case: no recompile limit, static shapes
    timed, check = workload(contender, case, s)
    start = time.perf_counter()
    got = synchronized(check, s.device)()
    first_call_s = time.perf_counter() - start
    if contender == "reference":
        return timed, first_call_s, 0.0
    want = workload("reference", case, s)[1]()
    error, ok = _max_error(got, want, **TOLERANCE[STEP if case.op == STEP else "op"])
    if not ok and case.op != STEP:
        ok = as_exact_as_reference(got, want, _float64_reference(case, s), **TOLERANCE["op"])
    if not ok:
        what = "outputs" if case.mode == "fwd" else "outputs or gradients"
        raise Disagreement(f"{what} differ from the reference (max abs error {error:.3g})")
    return timed, first_call_s, error


def run_contender(contender: str, cases, s: Settings, progress: bool = False) -> list:
    """Check and time `contender` on every case in this process; one result dict per case."""
    from tqdm.auto import tqdm

    if s.threads:
        torch.set_num_threads(s.threads)
    rows = []
    for case in tqdm(cases, desc=contender, disable=not progress, dynamic_ncols=True, leave=False):
        row = {**dataclasses.asdict(case), "contender": contender, "threads": torch.get_num_threads()}
        try:
            timed, first_call_s, error = prepare(contender, case, s)
            timing = measure(timed, s.device, warmup=s.warmup, reps=s.reps, budget_s=s.budget_s)
            row.update(status="ok", median_ms=timing.median_s * 1e3, reps=timing.reps, max_error=error)
            if case.op == STEP:
                row["seq_per_s"] = case.batch / timing.median_s
                trainer, batch = step_case(contender, case, s)
                row["runs_as"] = runs_as(trainer.model, batch.inputs)
            if contender == COMPILE:
                row["compile_s"] = max(0.0, first_call_s - timing.median_s)
        except Disagreement as err:
            row["status"] = f"refused: {err}"
        except Exception as err:  # a failing contender (out of memory at a large size, a bug) is reported
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0]}"
        rows.append(row)
    return rows


def run_isolated(contender: str, cases, s: Settings, progress: bool = False) -> list:
    """`run_contender` in a fresh Python process (progress goes to this process's stderr)."""
    spec = {"contender": contender, "cases": [dataclasses.asdict(c) for c in cases],
            "settings": dataclasses.asdict(s), "progress": progress}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        proc = subprocess.run([sys.executable, "-m", "ntm_fast.tools.bench", json.dumps(spec), result], env=env,
                              stdout=subprocess.DEVNULL, stderr=None if progress else subprocess.PIPE, text=True)
        if proc.returncode == 0:
            with open(result) as f:
                return json.load(f)
    why = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return [{**dataclasses.asdict(c), "contender": contender, "status": f"error: worker failed: {why[0]}"}
            for c in cases]


def _worker(argv):
    spec_json, result_path = argv
    spec = json.loads(spec_json)
    rows = run_contender(spec["contender"], [Case(**c) for c in spec["cases"]], Settings(**spec["settings"]),
                         spec["progress"])
    with open(result_path, "w") as f:
        json.dump(rows, f)


# ---- the sweep ---------------------------------------------------------------------------------------------
def default_contenders(device) -> list:
    """The backends worth timing on `device`: available ones, without the Triton interpreter on CPU."""
    device_type = torch.device(device).type
    return [n for n in available_backends(device_type) if n != "triton" or device_type == "cuda"]


def per_step_contenders(names, device) -> list:
    """``<backend>-per-step`` for each backend in `names` that has a whole-sequence node on `device`."""
    return [n + PER_STEP for n in names if n not in (COMPILE, "reference") and has_sequence_node(n, device)]


def check_contenders(names, device) -> list:
    """Validate user-named contenders: backends and ``<backend>-per-step`` (ValueError with the reason for an
    unknown or unavailable one, or a per-step contender whose backend has no sequence node on `device`)."""
    device_type = torch.device(device).type
    for contender in names:
        name, per_step = split_contender(contender)
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)} (and, for the whole step, "
                             f"<backend>{PER_STEP} for a backend with a whole-sequence node on the device)")
        if name == "triton" and device_type != "cuda":
            raise ValueError("backend 'triton' runs on CPU tensors only under the Triton interpreter, "
                             "which is a test tool, not a contender; benchmark it with --device cuda")
        reason = unavailable_reason(name, device_type)
        if reason is not None:
            raise ValueError(f"backend {name!r} is unavailable for {device_type} tensors: {reason}")
        if per_step and not has_sequence_node(name, device_type):
            raise ValueError(f"contender {contender!r}: backend {name!r} has no whole-sequence node for "
                             f"{device_type} tensors, so its step already runs step by step; use {name!r}")
    return list(dict.fromkeys(["reference", *names]))  # the reference is always timed: ratios need it


def _case_key(r) -> tuple:
    """What identifies a case across contenders."""
    return r["op"], r["mode"], r["batch"], r["slots"]


def add_speedups(rows) -> list:
    """speedup = reference median / contender median on the same case (>1: faster than the reference)."""
    ref = {_case_key(r): r["median_ms"] for r in rows if r["contender"] == "reference" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and _case_key(r) in ref:
            r["speedup"] = ref[_case_key(r)] / r["median_ms"]
    return rows


def add_per_step_ratios(rows) -> list:
    """vs_per_step = `<backend>-per-step` median / `<backend>` median on the same step case, on the backend's
    row (>1: the whole-sequence node is faster than the same model run step by step)."""
    per_step = {(*_case_key(r), split_contender(r["contender"])[0]): r["median_ms"] for r in rows
                if split_contender(r["contender"])[1] and r["status"] == "ok"}
    for r in rows:
        key = (*_case_key(r), r["contender"])
        if r["status"] == "ok" and key in per_step:
            r["vs_per_step"] = per_step[key] / r["median_ms"]
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device) -> dict:
    try:
        import triton
    except ImportError:
        triton = None
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{_cpu_name()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__ if triton else None,
            "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(rows) -> str:
    """The rows as a text table; the step rows say what the model ran as, and a backend's step row its
    sequence node's speed-up over the same backend run step by step (vs per-step)."""
    head = f"{'op':<11} {'mode':<7} {'B':>5} {'N':>5}  {'contender':<16} {'time':>10} {'seq/s':>8} " \
           f"{'vs ref':>7} {'vs per-step':>11} {'compile':>8}  runs as / status"
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        lines.append((
            f"{r['op']:<11} {r['mode']:<7} {r['batch']:>5} {r['slots']:>5}  {r['contender']:<16} "
            + (f"{r['median_ms']:>7.3f} ms" if ok else f"{'-':>10}")
            + (f" {r['seq_per_s']:>8.1f}" if "seq_per_s" in r else f" {'':>8}")
            + (f" {r['speedup']:>6.2f}x" if "speedup" in r else f" {'':>7}")
            + (f" {r['vs_per_step']:>10.2f}x" if "vs_per_step" in r else f" {'':>11}")
            + (f" {r['compile_s']:>7.1f}s" if "compile_s" in r else f" {'':>8}")
            + (f"  {r.get('runs_as', '')}" if ok else f"  {r['status']}")).rstrip())
    if any(split_contender(r["contender"])[1] for r in rows):
        lines.append(f"<backend>{PER_STEP}: the backend's model with fuse_sequence = False, one time step at a time; "
                     "vs per-step = its time / the backend's (the whole-sequence node's) time")
    return "\n".join(lines)


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows, path):
    """Time (ops) or sequences/s (step) against batch size, one line per contender (and slot count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, ScalarFormatter

    panels = list(dict.fromkeys((r["op"], r["mode"]) for r in rows))
    cols = 2
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(11, 3.2 * ((len(panels) + 1) // 2)),
                             squeeze=False)
    several_n = len({r["slots"] for r in rows}) > 1
    for ax, (op, mode) in zip(axes.flat, panels):
        series = {}
        for r in rows:
            if (r["op"], r["mode"]) == (op, mode) and r["status"] == "ok":
                label = r["contender"] + (f" N={r['slots']}" if several_n else "")
                series.setdefault(label, []).append((r["batch"], r["seq_per_s"] if op == STEP else r["median_ms"]))
        for label, points in series.items():
            ax.plot(*zip(*sorted(points)), marker="o", label=label)
        ax.set(title=f"{op} ({mode})", xlabel="batch size B", xscale="log", yscale="log",
               ylabel="sequences/s" if op == STEP else "time (ms)")
        ax.set_xticks(sorted({r["batch"] for r in rows}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_rounds(rounds) -> list:
    """One row per case and contender from several rounds' rows: the median over rounds of each round's
    median time (kept in `round_ms`), ok only if every round was; a failed round's status otherwise."""
    merged = {}
    for rows in rounds:
        for r in rows:
            merged.setdefault((*_case_key(r), r["contender"]), []).append(r)
    out = []
    for runs in merged.values():
        failed = [r for r in runs if r["status"] != "ok"]
        if failed:
            out.append({**failed[0], "rounds": len(runs)})
            continue
        row = {**runs[0], "rounds": len(runs), "round_ms": [r["median_ms"] for r in runs]}
        row["median_ms"] = statistics.median(row["round_ms"])
        row["max_error"] = max(r["max_error"] for r in runs)
        if "seq_per_s" in row:
            row["seq_per_s"] = row["batch"] / (row["median_ms"] / 1e3)
        if "compile_s" in row:
            row["compile_s"] = statistics.median(r["compile_s"] for r in runs)
        out.append(row)
    return out


def run_bench(contenders, compile_cases: str, cases, s: Settings, progress=True, rounds: int = 1) -> list:
    """Every contender in its own process; `compile_cases` (off/ops/all) picks the compile contender's cases.
    With `rounds` > 1 the contenders' processes alternate that many times (the order reversed every other
    round) and each case reports the median over rounds: on a shared machine whose speed drifts over
    minutes, contenders timed one after the other would otherwise meet different machines."""
    runs = [(c, [case for case in cases if case.op == STEP or not split_contender(c)[1]]) for c in contenders]
    runs = [(c, its_cases) for c, its_cases in runs if its_cases]
    if compile_cases != "off":
        runs.append((COMPILE, [c for c in cases if compile_cases == "all" or c.op != STEP]))
    per_round = []
    for k in range(rounds):
        rows = []
        for i, (contender, its_cases) in enumerate(runs if k % 2 == 0 else runs[::-1], 1):
            if progress:
                label = f"round {k + 1}/{rounds}, " if rounds > 1 else ""
                print(f"[{label}{i}/{len(runs)}] {contender}: {len(its_cases)} cases", file=sys.stderr, flush=True)
            rows += run_isolated(contender, its_cases, s, progress)
        per_round.append(rows)
    rows = merge_rounds(per_round)
    order = {c: i for i, (c, _) in enumerate(runs)}
    rows.sort(key=lambda r: ((OPS + (STEP,)).index(r["op"]), MODES.index(r["mode"]), r["slots"], r["batch"],
                             order[r["contender"]]))
    return add_per_step_ratios(add_speedups(rows))


# ---- the command -------------------------------------------------------------------------------------------
def add_bench_parser(sub):
    p = sub.add_parser("bench", help="time every backend against the reference",
                       description="Time every available backend and torch.compile(reference) on the same "
                                   "inputs, per op and per whole training step (copy task), forward and "
                                   "forward+backward, over batch sizes x slot counts. Each contender runs in its "
                                   "own process and is timed only if it agrees with the reference. Prints a "
                                   "table and writes bench.csv, bench.json and bench.png into --out.")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backends", nargs="*", default=None,
                   help="backends to time besides the reference (default: every one available on the device, "
                        "and on cuda triton-per-step; none: the reference alone). <backend>-per-step (e.g. "
                        "cpp-per-step on cpu) times, in the step cases, a backend that runs the whole sequence "
                        "as one node with that node switched off (fuse_sequence = False)")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="ops",
                   help="torch.compile(reference) as a contender: off, ops (default; the per-op cases) or all "
                        "(also the whole step: slow to compile on a CPU)")
    p.add_argument("--ops", nargs="+", choices=OPS + (STEP,), default=list(OPS + (STEP,)),
                   help="cases to run (default: all four ops and the whole step)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: fwd fwd+bwd")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256], help="B values (default 1 32 256)")
    p.add_argument("--slots", type=int, nargs="+", default=[128], help="memory slots N values (default 128)")
    add_model_options(p, ("memory_width", "read_heads", "write_heads", "shift_range", "controller_size"),
                      with_defaults=True)
    p.add_argument("--length", type=int, default=20, help="copy-task length L of the step cases (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing, CPU (default 2)")
    p.add_argument("--reps", type=int, default=10, help="timed calls per case, CPU; the median is reported "
                                                        "(default 10)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="seconds per case after which repetitions stop, CPU (at least 3 are taken; default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per contender (default: torch's)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the contenders' processes this many times, alternating, and report each case's "
                        "median over rounds (default 1; use 3-5 on a shared or noisy machine)")
    p.add_argument("--out", default="bench-results", help="output folder (default bench-results)")
    p.add_argument("--no-plot", action="store_true", help="skip bench.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)


def _positive(name, values, minimum=1):
    for v in values:
        if v < minimum:
            raise ValueError(f"--{name} must be >= {minimum}, got {v}")


def cmd_bench(args):
    start = time.perf_counter()
    for name, values, minimum in (("batch-sizes", args.batch_sizes, 1), ("slots", args.slots, 1),
                                  ("memory-width", [args.memory_width], 1), ("read-heads", [args.read_heads], 1),
                                  ("write-heads", [args.write_heads], 1), ("shift-range", [args.shift_range], 0),
                                  ("controller-size", [args.controller_size], 1), ("length", [args.length], 1),
                                  ("warmup", [args.warmup], 0), ("reps", [args.reps], 1), ("rounds", [args.rounds], 1),
                                  ("threads", [] if args.threads is None else [args.threads], 1)):
        _positive(name, values, minimum)
    if args.budget <= 0:
        raise ValueError(f"--budget must be positive, got {args.budget}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible")
    if args.backends is None:  # on CUDA the per-step contenders come by default; on CPU they are asked for
        names = default_contenders(args.device)
        if torch.device(args.device).type == "cuda" and STEP in args.ops:
            names += per_step_contenders(names, args.device)
    else:
        names = args.backends
    contenders = check_contenders(names, args.device)
    s = Settings(width=args.memory_width, read_heads=args.read_heads, write_heads=args.write_heads,
                 shift_range=args.shift_range, controller_size=args.controller_size, length=args.length,
                 device=args.device, warmup=args.warmup, reps=args.reps, budget_s=args.budget, threads=args.threads)
    cases = [Case(op, mode, b, n) for op in args.ops for mode in args.modes for n in args.slots
             for b in args.batch_sizes]
    rows = run_bench(contenders, args.compile, cases, s, progress=not args.no_progress, rounds=args.rounds)
    wall_s = time.perf_counter() - start
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    meta = {**environment(args.device), "threads": threads, "rounds": args.rounds, "wall_s": round(wall_s, 1),
            "settings": dataclasses.asdict(s), "command": "ntm-fast " + " ".join(sys.argv[1:])}
    print(f"ntm-fast bench on {args.device}, torch {meta['torch']}, {', '.join(map(str, threads))} thread(s); "
          f"M={s.width} R={s.read_heads} W={s.write_heads} S={s.shift_range}, step: copy L={s.length} "
          f"(fwd+bwd step includes the optimizer); vs ref = reference time / contender time"
          + (f"; times: median of {args.rounds} alternating rounds" if args.rounds > 1 else ""))
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    write_csv(rows, os.path.join(args.out, "bench.csv"))
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    files = ["bench.csv", "bench.json"]
    if not args.no_plot:
        plot(rows, os.path.join(args.out, "bench.png"))
        files.append("bench.png")
    print(f"{len(rows)} results in {wall_s:.0f} s; wrote {', '.join(os.path.join(args.out, f) for f in files)}")


if __name__ == "__main__":
    _worker(sys.argv[1:])
