"""`ntm-fast profile`: where a training step's time, memory traffic and saved activations go.

The step is cut into parts, each a function of tensors built from the model's own modules:

* controller (the LSTM or feedforward layer, plus the head-parameter layer and its activations),
* the memory interaction: one `memory_step` call for a fused backend; for `reference` split into
  addressing (all heads against M_{t-1}), read and write, exactly as `reference.memory_step` runs them,
* output/loss (the output layer of every time step, then the task's loss),
* optimizer (gradient clipping and the RMSprop update, once per step).

Each part's inputs are captured from a real forward pass (checked to equal `model(x)`), then the part is
timed alone over all 2L+1 time steps, forward and forward+backward, with `bench.measure` -- the same timing
helper `ntm-fast bench` uses. Beside each time stands an analytic minimum of the bytes the part must move
(`traffic_model`), hence the achieved bandwidth, and the activation bytes it saves for backward (counted
with `saved_tensors_hooks`). `--trace` writes a Chrome trace of one step with these parts as ranges.

Where the model runs the whole sequence as one autograd node (model/fused.py: `cpp` on CPU, `triton` on
CUDA), that node is what the step runs: the report's parts are then the node itself (controller, memory
interaction and output layer of every time step), the loss and the optimizer, and the per-op parts above
follow, timed alone, as what the same step would cost run step by step. ``<backend>-per-step`` profiles that
backend's model with the node switched off (`fuse_sequence = False`).
"""
from __future__ import annotations

import contextlib
import json
import sys

import torch

from .. import ops
from ..ops.dispatch import resolve
from .options import add_device_backend, add_model_options, model_options_given
from .bench import (check_contenders, forward_backward, forward_only, measure, runs_as, split_contender,
                    step_trainer, training_step)

MEMORY_PARTS = ("addressing", "read", "write")  # the reference's memory interaction, split
MEMORY = "memory interaction"
SEQUENCE = "sequence node"  # the whole sequence as one autograd node: controller + memory + output, all T steps


# ---- the analytic byte model -------------------------------------------------------------------------------
def _min_traffic(inputs: int, outputs: int, params: int = 0) -> tuple:
    """(forward, backward) elements a part must move at least: forward reads its inputs and parameters once
    and writes its outputs once; backward reads the saved inputs, the output gradients and the parameters,
    and writes the input and parameter gradients."""
    return inputs + params + outputs, 2 * inputs + outputs + 2 * params


def traffic_model(B, N, M, R, W, S, C, X, Y, num_params, controller="lstm", element_size=4) -> dict:
    """Minimum bytes per part: {part: (forward, backward)} per time step; 'optimizer' per training step.

    B batch, N slots, M width, R/W heads, S shift range, C controller units, X/Y input/output sizes,
    num_params the model's parameter count. 'memory interaction' is the fused minimum: memory read once and
    written once; its split parts each read the memory again.
    """
    H, K = R + W, 2 * S + 1
    head_outputs = H * M + 3 * H + H * K + 2 * W * M  # key, beta, gate, gamma, shift; erase, add
    addressing_in = B * H * (M + 3 + K) + B * H * N  # head parameters and previous weightings
    if controller == "lstm":
        ctrl = _min_traffic(B * (X + R * M) + 2 * B * C, 2 * B * C + B * head_outputs,
                            4 * C * (X + R * M) + 4 * C * C + 8 * C + (C + 1) * head_outputs)
    else:
        ctrl = _min_traffic(B * (X + R * M), B * C + B * head_outputs,
                            C * (X + R * M) + C + (C + 1) * head_outputs)
    elements = {
        "controller": ctrl,
        "addressing": _min_traffic(B * N * M + addressing_in, B * H * N),
        "read": _min_traffic(B * N * M + B * R * N, B * R * M),
        "write": _min_traffic(B * N * M + B * W * N + 2 * B * W * M, B * N * M),
        MEMORY: _min_traffic(B * N * M + addressing_in + 2 * B * W * M, B * R * M + B * H * N + B * N * M),
        "output/loss": _min_traffic(B * (C + R * M) + B * Y, B * Y, Y * (C + R * M) + Y),
        # clipping reads and writes each gradient; RMSprop with momentum reads parameter, gradient, square
        # average and momentum buffer and writes all but the gradient.
        "optimizer": (9 * num_params, 0),
    }
    return {part: (f * element_size, b * element_size) for part, (f, b) in elements.items()}


# ---- the instrumented step ---------------------------------------------------------------------------------
class InstrumentedStep:
    """A training step of `trainer`'s model on `batch`, part by part (see the module docstring)."""

    def __init__(self, trainer, batch, backend: str):
        self.trainer, self.batch, self.backend = trainer, batch, backend
        self.cell = trainer.model.cell
        self.split = backend == "reference"
        self.memory_parts = MEMORY_PARTS if self.split else (MEMORY,)
        self.parts = {"controller": self.controller, "addressing": self.addressing, "read": self.read,
                      "write": self.write, MEMORY: self.memory_interaction, "output/loss": self.output}
        self.part_params = {"controller": [*self.cell.controller.parameters(), *self.cell.heads.parameters()],
                            "output/loss": list(self.cell.output.parameters())}
        self.current = None  # the part running now (labels saved tensors)

    # The parts: tensors in, a tuple of tensors out.
    def controller(self, x_t, reads, *state):
        h, state = self.cell.controller_step(x_t, reads, state or None)
        read_heads, write_heads = self.cell.head_parameters(h)
        return (h, *(state[1:] if state else ()), *read_heads, *write_heads)

    def addressing(self, memory, *a):  # a: 5 read-head, 7 write-head tensors, w_read_prev, w_write_prev
        R = self.cell.R
        cat = lambda x, y: torch.cat([x, y], dim=1)  # noqa: E731 - read heads first, as in memory_step
        w = ops.address(memory, *(cat(x, y) for x, y in zip(a[:5], a[5:10])), cat(a[12], a[13]),
                        backend=self.backend)
        return w[:, :R], w[:, R:]

    def read(self, memory, w_read):
        return (ops.read(memory, w_read, backend=self.backend),)

    def write(self, memory, w_write, erase, add):
        return (ops.write(memory, w_write, erase, add, backend=self.backend),)

    def memory_interaction(self, memory, *a):
        return ops.memory_step(memory, ops.ReadHeads(*a[:5]), ops.WriteHeads(*a[5:12]), a[12], a[13],
                               backend=self.backend)

    def output(self, h, reads):
        return (self.cell.output(torch.cat([h, reads], dim=-1)),)

    @contextlib.contextmanager
    def _part(self, name):
        self.current = name
        with torch.profiler.record_function(name):
            yield
        self.current = None

    def _call(self, part, record, *args):
        if record is not None:
            record.setdefault(part, []).append(tuple(t.detach() for t in args))
        with self._part(part):
            return self.parts[part](*args)

    def forward(self, record=None):
        """Logits [T, B, Y] of the batch, part by part; with a dict `record`, each part's inputs per step."""
        x, B, lstm = self.batch.inputs, self.batch.inputs.shape[1], self.cell.controller_kind == "lstm"
        state = self.cell.initial_state(B)
        ctrl_state = state.controller or ()
        reads, w_read, w_write, memory = state.reads, state.w_read, state.w_write, state.memory
        logits = []
        for x_t in x:
            out = self._call("controller", record, x_t, reads, *ctrl_state)
            h, heads = out[0], out[2:] if lstm else out[1:]
            ctrl_state = out[:2] if lstm else ()
            if self.split:
                w_read, w_write = self._call("addressing", record, memory, *heads, w_read, w_write)
                (r,) = self._call("read", record, memory, w_read)
                (memory,) = self._call("write", record, memory, w_write, heads[10], heads[11])
            else:
                r, w_read, w_write, memory = self._call(MEMORY, record, memory, *heads, w_read, w_write)
            reads = r.reshape(B, -1)
            logits.append(self._call("output/loss", record, h, reads)[0])
        return torch.stack(logits)

    def loss(self, logits):
        with self._part("output/loss"):
            return self.trainer.task.loss(logits, self.batch)

    def capture(self) -> dict:
        """Each part's inputs at every time step, from a forward pass checked against `model(x)`."""
        record = {}
        with torch.no_grad():
            got, want = self.forward(record), self.trainer.model(self.batch.inputs)
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            raise RuntimeError("profiling's step-by-step forward differs from the model's: "
                               "ntm_fast/tools/profiling.py no longer matches NTMCell.forward")
        return record

    def part_callables(self, part, captured) -> tuple:
        """(forward, forward+backward) callables running `part` alone over all captured time steps."""
        sizes = [len(args) for args in captured]
        fn = self.parts[part]

        def sequence(*flat):
            steps, i = [], 0
            for n in sizes:
                steps.append(fn(*flat[i:i + n]))
                i += n
            if part == "output/loss":
                return self.trainer.task.loss(torch.stack([out[0] for out in steps]), self.batch)
            return tuple(t for out in steps for t in out)

        flat = [t for args in captured for t in args]
        return forward_only(sequence, flat), forward_backward(sequence, flat, self.part_params.get(part, ()))

    def _held(self, run) -> dict:
        """Activation bytes saved for backward while `run()` runs, per part (parameters and storages seen
        before are not counted again)."""
        seen = {p.untyped_storage().data_ptr() for p in self.trainer.model.parameters()}
        held = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                held[self.current] = held.get(self.current, 0) + storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
        return held

    def saved_bytes(self) -> dict:
        """Activation bytes saved for backward over one forward+loss, per part."""
        return self._held(lambda: self.loss(self.forward()))

    def node_saved_bytes(self) -> dict:
        """Activation bytes saved for backward by the sequence node and by the loss over one forward+loss."""
        def run():
            with self._part(SEQUENCE):
                logits = self.trainer.model(self.batch.inputs)
            with self._part("loss"):
                self.trainer.task.loss(logits, self.batch)

        return self._held(run)

    def trace(self, path, update, node: bool = False):
        """Write a Chrome trace of one training step (forward parts as ranges, or the sequence node's one
        range with `node`, then backward, optimizer)."""
        from torch.profiler import ProfilerActivity, profile, record_function

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.batch.inputs.is_cuda else [])
        with profile(activities=activities) as prof:
            self.trainer.model.zero_grad(set_to_none=True)
            if node:
                with self._part(SEQUENCE):
                    logits = self.trainer.model(self.batch.inputs)
                with self._part("loss"):
                    loss = self.trainer.task.loss(logits, self.batch)
            else:
                loss = self.loss(self.forward())
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer"):
                update()
        prof.export_chrome_trace(path)


# ---- the profile -------------------------------------------------------------------------------------------
def resolve_backend(name: str, device) -> str:
    """The backend (or ``<backend>-per-step``) `name` stands for on `device` ('auto' -> the one auto picks);
    ValueError if unusable."""
    device = torch.device(device)
    if name == "auto":
        return resolve(name, device.type)
    check_contenders([name], device)  # says why an unknown or unavailable backend cannot be profiled
    return name


def _timed_parts(step, parts_names, captured, timed) -> dict:
    parts = {}
    for part in parts_names:
        fwd, fwd_bwd = step.part_callables(part, captured[part])
        parts[part] = {"fwd_s": timed(fwd), "fwd_bwd_s": timed(fwd_bwd)}
    return parts


def profile_step(*, task="copy", batch_size=256, length=20, backend="auto", device="cpu", model=None,
                 warmup=1, reps=5, budget_s=2.0, trace=None, seed=0) -> dict:
    """Profile one training step; returns the report as a dict (see `format_report`)."""
    contender = resolve_backend(backend, device)
    trainer = step_trainer(contender, batch_size, device, task=task, model=model or {}, seed=seed)
    batch = trainer.task.sample(batch_size, length, torch.Generator().manual_seed(seed)).to(device)
    train_step, gradients, update = training_step(trainer, batch)
    step = InstrumentedStep(trainer, batch, split_contender(contender)[0])
    timed = lambda fn: measure(fn, device, warmup=warmup, reps=reps, budget_s=budget_s).median_s  # noqa: E731
    ran_as = runs_as(trainer.model, batch.inputs)
    node = ran_as == "sequence node"

    captured = step.capture()
    per_op = _timed_parts(step, ("controller", *step.memory_parts, "output/loss"), captured, timed)
    if node:  # the step's parts are the node, the loss and the optimizer; the per-op parts are set aside
        model, params = trainer.model, list(trainer.model.parameters())
        logits = model(batch.inputs).detach()
        loss = lambda y: trainer.task.loss(y, batch)  # noqa: E731
        parts = {SEQUENCE: {"fwd_s": timed(forward_only(lambda: model(batch.inputs), [])),
                            "fwd_bwd_s": timed(forward_backward(lambda: model(batch.inputs), [], params))},
                 "loss": {"fwd_s": timed(forward_only(loss, [logits])),
                          "fwd_bwd_s": timed(forward_backward(loss, [logits]))}}
    else:
        parts = per_op
    gradients()
    parts["optimizer"] = {"fwd_s": None, "fwd_bwd_s": timed(update)}
    whole = {"fwd_s": timed(forward_only(lambda: trainer.task.loss(trainer.model(batch.inputs), batch), [])),
             "fwd_bwd_s": timed(train_step)}

    cell, T = trainer.model.cell, batch.inputs.shape[0]
    num_params = sum(p.numel() for p in trainer.model.parameters())
    traffic = traffic_model(batch_size, cell.N, cell.M, cell.R, cell.W, cell.S, cell.controller_size,
                            cell.input_size, cell.output_size, num_params, cell.controller_kind,
                            batch.inputs.element_size())
    saved = step.saved_bytes()  # the per-op path's
    for part in ("controller", *step.memory_parts, "output/loss"):
        row = per_op[part]
        row["min_bytes"] = sum(traffic[part]) * T
        row["saved_bytes_per_t"] = saved.get(part, 0) / T
    if node:  # no per-part byte minimum for the node: its state stays on chip between time steps
        saved = step.node_saved_bytes()
        for part in (SEQUENCE, "loss"):
            parts[part].update(min_bytes=None, saved_bytes_per_t=saved.get(part, 0) / T)
    parts["optimizer"].update(min_bytes=sum(traffic["optimizer"]), saved_bytes_per_t=0.0)
    memory = {"fwd_s": sum(per_op[p]["fwd_s"] for p in step.memory_parts),
              "fwd_bwd_s": sum(per_op[p]["fwd_bwd_s"] for p in step.memory_parts),
              "min_bytes": sum(traffic[MEMORY]) * T,
              "saved_bytes_per_t": sum(per_op[p]["saved_bytes_per_t"] for p in step.memory_parts)}
    if trace:
        step.trace(trace, update, node=node)
    return {"task": trainer.task.name, "batch_size": batch_size, "length": length, "time_steps": T,
            "backend": contender, "device": str(device), "threads": torch.get_num_threads(),
            "model": trainer.model.config(), "split": step.split, "runs_as": ran_as, "parts": parts,
            "per_step_parts": per_op if node else None, "memory": memory, "whole_step": whole,
            # the memory interaction's share, where the step runs it as parts of its own
            "memory_fraction": None if node else memory["fwd_bwd_s"] / whole["fwd_bwd_s"],
            "saved_bytes_per_t": sum(saved.values()) / T}


def format_report(r: dict) -> str:
    ms = lambda s: f"{s * 1e3:9.2f}" if s is not None else f"{'-':>9}"  # noqa: E731
    step_s = r["whole_step"]["fwd_bwd_s"]
    node = r["runs_as"] == "sequence node"

    def line(name, row):
        if row["min_bytes"] is None:
            traffic = f"{'-':>10} {'-':>7}"
        else:
            traffic = f"{row['min_bytes'] / 1e6:10.2f} {row['min_bytes'] / row['fwd_bwd_s'] / 1e9:7.2f}"
        return (f"{name:<22}{ms(row['fwd_s'])} {ms(row['fwd_bwd_s'])} {100 * row['fwd_bwd_s'] / step_s:8.1f}% "
                f"{traffic} {row['saved_bytes_per_t'] / 1e3:9.1f}")

    def per_op_lines(parts, indent=""):
        out = [line(indent + "controller", parts["controller"])]
        if r["split"]:
            out += [line(indent + "  " + p, parts[p]) for p in MEMORY_PARTS]
            out.append(line(indent + MEMORY + " (sum)", r["memory"]))
        else:
            out.append(line(indent + MEMORY, parts[MEMORY]))
        return out + [line(indent + "output/loss", parts["output/loss"])]

    parts = r["parts"]
    head = f"{'part':<22}{'fwd ms':>9} {'f+b ms':>9} {'of step':>9} {'min MB':>10} {'GB/s':>7} {'saved KB/t':>9}"
    lines = [f"ntm-fast profile: {r['task']} task, B={r['batch_size']}, L={r['length']} ({r['time_steps']} time "
             f"steps), N={r['model']['memory_slots']} M={r['model']['memory_width']}, backend {r['backend']} on "
             f"{r['device']}, {r['threads']} thread(s); the step ran as: {r['runs_as']}", head, "-" * len(head)]
    if node:
        lines += [line(SEQUENCE, parts[SEQUENCE]), line("loss", parts["loss"])]
    else:
        lines += per_op_lines(parts)
    lines.append(line("optimizer", parts["optimizer"]))
    fwd_sum = sum(p["fwd_s"] for p in parts.values() if p["fwd_s"] is not None)
    parts_sum = sum(p["fwd_bwd_s"] for p in parts.values())
    whole = r["whole_step"]
    lines += ["-" * len(head),
              f"{'sum of parts':<22}{ms(fwd_sum)} {ms(parts_sum)} {100 * parts_sum / step_s:8.1f}%",
              f"{'whole step (measured)':<22}{ms(whole['fwd_s'])} {ms(step_s)} {100.0:8.1f}%  "
              f"({r['batch_size'] / step_s:.0f} sequences/s)"]
    if node:
        lines += [f"{SEQUENCE}: controller, memory interaction and output layer of all {r['time_steps']} time steps "
                  "in one autograd node (ntm_fast/model/fused.py); no per-part byte minimum (it keeps its state "
                  "between time steps, so the per-part minima do not apply).",
                  "", "The same step run step by step, its parts each timed alone (not what this step ran; "
                  f"% of the step above; `--backend {r['backend']}-per-step` profiles that path):"]
        lines += per_op_lines(r["per_step_parts"], "  ")
        lines += ["", f"held for backward: {r['saved_bytes_per_t'] / 1e3:.1f} KB per time step (the {SEQUENCE} "
                  f"and the loss; step by step the {MEMORY} alone holds {r['memory']['saved_bytes_per_t'] / 1e3:.1f} "
                  "KB)"]
    else:
        lines += ["", f"memory interaction: {100 * r['memory_fraction']:.0f}% of a training step "
                  f"({r['memory']['fwd_bwd_s'] * 1e3:.1f} of {step_s * 1e3:.1f} ms)",
                  f"held for backward: {r['saved_bytes_per_t'] / 1e3:.1f} KB per time step "
                  f"({r['memory']['saved_bytes_per_t'] / 1e3:.1f} KB of it by the memory interaction)"]
    lines.append("Parts are timed alone (forward, forward+backward) on inputs captured from a real step; min MB is "
                 "the analytic least traffic per step (memory read once, written once); GB/s = min MB / f+b time.")
    if r["split"]:
        lines.append(f"The {MEMORY} (sum) row's min MB is the fused minimum; the split ops each read memory again.")
    if r["runs_as"] == "step nodes":
        lines.append("This step ran each time step as one fused autograd node (ntm_fast/model/fused.py); the parts "
                     "are its unfused ops timed alone, so they overlap and can add up to more than the step.")
    return "\n".join(lines)


def add_profile_parser(sub):
    from .tasks import TASKS

    p = sub.add_parser("profile", help="split a training step's time and memory traffic into parts",
                       description="Time a training step's parts (controller, addressing, read, write or the "
                                   "fused memory interaction, output/loss, optimizer; or, where the model runs "
                                   "the whole sequence as one node, that node, the loss and the optimizer, "
                                   "with the per-step parts beside), set them beside the "
                                   "analytic minimum of bytes each must move, and count the activations held "
                                   "for backward per time step.")
    p.add_argument("--task", default="copy", choices=sorted(TASKS), help="task whose model is profiled (default copy)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per batch (default 256)")
    p.add_argument("--length", type=int, default=20, help="sequence length L (default 20)")
    add_device_backend(p, "ops backend (default auto: the one training would use); <backend>-per-step (e.g. "
                          "cpp-per-step) profiles a backend that runs the whole sequence as one node with that "
                          "node switched off")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing, CPU (default 1)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per part, CPU; the median is reported (default 5)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per part after which repetitions stop "
                                                              "(at least 3 are taken; default 2)")
    p.add_argument("--trace", default=None, help="write a Chrome trace (chrome://tracing, Perfetto) of one step here")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    add_model_options(p)
    p.set_defaults(func=cmd_profile)


def cmd_profile(args):
    for name in ("batch_size", "length", "reps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0 or args.budget <= 0:
        raise ValueError("--warmup must be >= 0 and --budget positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_options_given(args)
    report = profile_step(task=args.task, batch_size=args.batch_size, length=args.length, backend=args.backend,
                          device=args.device, model=model, warmup=args.warmup, reps=args.reps,
                          budget_s=args.budget, trace=args.trace)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "command": "ntm-fast " + " ".join(sys.argv[1:])}, f, indent=2)
    for path in filter(None, (args.trace, args.json)):
        print(f"wrote {path}")
