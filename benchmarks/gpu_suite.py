"""The prepared GPU run: the whole training step, the GPU tests and the per-op tables in at most 6 minutes.

    python benchmarks/gpu_suite.py [OUT_DIR]          # on the GPU machine (OUT_DIR defaults to $OUT)
    python benchmarks/gpu_suite.py OUT_DIR --dry-run  # CPU, Triton interpreter, tiny sizes: checks the script

In this order, each part checking the time left and listing what it could not reach as skipped:
  1. the environment;
  2. the whole training step (copy task, L=20: 41 time steps; LSTM 100, N=128, M=20, one read and one write
     head; forward, loss, backward, gradient clipping, RMSprop) at B in {32, 256, 1024, 4096}: `triton` (the
     whole sequence as one autograd node), `triton-ieee` and `triton-tf32` (the same node with
     NTM_FAST_DOT_PRECISION=ieee or tf32 for both kernels), `triton-rows8` (the same node with programs of 8
     batch rows, `rows=8` in both kernels' settings),
     `triton-per-step` (the same model with `fuse_sequence = False`: the per-op kernels, one time step at a
     time), the eager reference, `cuda` (its extension builds in a thread beside the first cases), then
     torch.compile(reference) with its compile time; sequences/s and ratios;
  3. tests, each pytest run with its own timeout from the budget: the sequence node's first (its `-m gpu`
     tests, then tests/test_triton_sequence.py on CUDA tensors: the compiled sequence kernels), then the
     float32 cases that failed on the first GPU run (H200, 2026-11-26), the largest of them again with
     TRITON_DEFAULT_FP_FUSION=0 (no fused multiply-adds), then the rest of `pytest -m gpu`
     (tests/test_compile_sm90.py needs no GPU: left out);
  4. the per-op tables (memory_step, address over both heads, read, write; forward and forward+backward;
     B in {32, 256, 1024, 4096} x N in {128, 1024}), torch.compile(reference) for memory_step only (each op
     and mode compiles anew); then kernel launches per call and memory_step's bandwidth.

Every table is rewritten into OUT_DIR after each case, so a run cut short still leaves what it measured:
results.md (the tables), results.csv (bench.csv's columns), results.json ({meta, results} as `ntm-fast
bench` writes bench.json; meta holds the git commit: `git rev-parse HEAD`, or $NTM_FAST_COMMIT where the tree
is no git checkout or its .git is not the tree's) and pytest_<name>.txt. A watchdog ends the process at the time limit.

The workloads, the timing (`triton.testing.do_bench`, median) and the check of every contender against the
reference before it is timed (a disagreeing one is reported as refused) are `ntm_fast.tools.bench`'s, the
code behind `ntm-fast bench`; here all contenders run in this process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

START = time.monotonic()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Seconds that must be left to start a part or a case. Each part keeps back what the later parts need.
KEEP = {"step": 190, "compile step": 130, "tests": 40, "ops": 8}
COMPILE_S = 60  # what a first torch.compile of a case may take (dynamic shapes: later sizes reuse it)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "gpu_suite_out"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny sizes, no pytest")
    parser.add_argument("--limit", type=float, default=6 * 60,
                        help="seconds after which the watchdog ends the run (default 360)")
    args = parser.parse_args()
    if args.limit < 20:
        parser.error(f"--limit must be at least 20 seconds, got {args.limit}")
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dry_run = args.dry_run or args.device == "cpu"
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton kernels are defined
    return args


ARGS = parse_args()
LIMIT_S = ARGS.limit  # the watchdog ends the process here
BUDGET_S = LIMIT_S - 15  # what the parts plan with; the rest writes the files

import torch  # noqa: E402

import ntm_fast  # noqa: E402
from ntm_fast.ops.dispatch import BACKENDS, import_kernels, resolved_ops, unavailable_reason  # noqa: E402
from ntm_fast.tools import bench  # noqa: E402
from ntm_fast.tools.bench import COMPILE, MODES, OP_CALLS, OPS, PER_STEP, STEP, Case  # noqa: E402

import_kernels()
OP_ORDER = ("memory_step", "address", "read", "write")
TF32 = "triton-tf32"  # the sequence node with NTM_FAST_DOT_PRECISION=tf32 (its float32 tl.dot on tensor cores)
IEEE = "triton-ieee"  # the sequence node with NTM_FAST_DOT_PRECISION=ieee (both kernels' products in IEEE float32)
ROWS8 = "triton-rows8"  # the sequence node with 8 batch rows per program (twice the programs)
# The sequence node under other settings, read from the environment when it launches (kernels/sequence.py);
# the rest of its tiles and warps are benchmarks/sequence_sweep.py's to time.
VARIANTS = {TF32: {"NTM_FAST_DOT_PRECISION": "tf32"}, IEEE: {"NTM_FAST_DOT_PRECISION": "ieee"},
            ROWS8: {"NTM_FAST_SEQUENCE_FORWARD": "rows=8", "NTM_FAST_SEQUENCE_BACKWARD": "rows=8"}}
CUDA = []  # ["cuda"] once the extension has built (cuda_ready)
OP_CONTENDERS = ["reference", "triton"]  # + CUDA
STEP_CONTENDERS = ["triton", IEEE, TF32, ROWS8, "triton" + PER_STEP, "reference"]  # + CUDA, then COMPILE


class CudaBuild(threading.Thread):
    """Builds the CUDA extension (a minute of nvcc on a fresh machine) while the Triton and reference cases
    run; the first `cuda` case waits for it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.reason = "not built yet"

    def run(self):
        start = time.monotonic()
        self.reason = unavailable_reason("cuda", torch.device(ARGS.device).type)
        self.seconds = time.monotonic() - start


CUDA_BUILD = CudaBuild()


def cuda_ready() -> bool:
    """Whether the `cuda` contender can run (waiting for its build while the budget allows); notes the outcome."""
    if CUDA_BUILD.is_alive():
        CUDA_BUILD.join(timeout=max(0.0, left_s() - KEEP["step"]))
        if CUDA_BUILD.is_alive():
            return False
    if not CUDA and CUDA_BUILD.reason is None:
        CUDA.append("cuda")
        OP_CONTENDERS.append("cuda")
        RESULTS.environment.append(f"cuda extension built in {CUDA_BUILD.seconds:.0f} s (beside the first cases)")
    elif not CUDA and not any(line.startswith("cuda extension") for line in RESULTS.environment):
        RESULTS.environment.append(f"cuda extension: unavailable ({CUDA_BUILD.reason})")
    return bool(CUDA)
if ARGS.dry_run:  # inductor's C++ build would take minutes on the CPU: the eager backend exercises the path
    SETTINGS = bench.Settings(width=4, controller_size=8, length=1, device="cpu", warmup=0, reps=1,
                              budget_s=0.05, compile_backend="eager", compile_dynamic=True)
    SIZES, STEP_BATCHES = [(2, 8)], [2]
else:  # M=20, R=W=1, S=1, LSTM 100, copy L=20: bench's defaults
    SETTINGS = bench.Settings(device=ARGS.device, compile_dynamic=True)
    SIZES = [(B, N) for N in (128, 1024) for B in (32, 256, 1024, 4096)]
    STEP_BATCHES = [32, 256, 1024, 4096]
S = SETTINGS
STEP_SLOTS = 128 if not ARGS.dry_run else 8


def left_s():
    return BUDGET_S - (time.monotonic() - START)


# ---- the results, rewritten into OUT_DIR after every case ---------------------------------------------------
def all_rows(rows) -> list:
    """Copies of `rows` with their ratios: vs the reference (speedup), the sequence node vs per-step."""
    return bench.add_per_step_ratios(bench.add_speedups([dict(r) for r in rows]))


def per_s(row) -> str:
    return "-" if "seq_per_s" not in row else f"{row['seq_per_s']:,.0f}" if row["seq_per_s"] >= 100 \
        else f"{row['seq_per_s']:.3g}"


class Results:
    def __init__(self):
        self.environment, self.tests, self.rows, self.extra = [], [], [], []
        self.meta = {}
        self.state = "running"
        self.lock = threading.Lock()

    def add(self, row):
        self.rows.append(row)
        self.save()

    def markdown(self) -> str:
        rows = all_rows(self.rows)
        T = 2 * S.length + 1
        lines = ["# ntm_fast on a GPU: the prepared suite", "", f"state: {self.state}", ""]
        lines += [f"- {line}" for line in self.environment]
        lines += ["", f"## Whole training step (copy L={S.length}: T={T}, N={STEP_SLOTS}, M={S.width}, LSTM "
                  f"{S.controller_size}; forward, loss, backward, clipping, RMSprop)", ""] + step_tables(rows)
        lines += ["", "## Tests", ""] + ([f"- {t}" for t in self.tests] or ["- not reached"])
        lines += ["", "## Ops: reference vs torch.compile(reference) vs triton",
                  f"M={S.width}, S={S.shift_range}, {S.read_heads} read + {S.write_heads} write head (address: "
                  "both heads), float32; the compile contender uses dynamic shapes, memory_step only"]
        lines += op_tables(rows) + self.extra
        return "\n".join(lines) + "\n"

    def save(self):
        with self.lock:
            rows = all_rows(self.rows)
            meta = {**self.meta, "state": self.state, "wall_s": round(time.monotonic() - START, 1)}
            for name, write in (("results.md", lambda f: f.write(self.markdown())),
                                ("results.json", lambda f: json.dump({"meta": meta, "results": rows}, f, indent=1))):
                path = os.path.join(ARGS.out, name)
                with open(path + ".tmp", "w") as f:
                    write(f)
                    f.flush()
                os.replace(path + ".tmp", path)  # a reader (or a cut) never meets half a file
            bench.write_csv(rows, os.path.join(ARGS.out, "results.csv"))


RESULTS = Results()
CHILDREN = []  # the pytest process running now, if any


def watchdog():
    """End the process at LIMIT_S, leaving the files with what was measured and a state saying so."""
    def stop():
        for child in list(CHILDREN):
            child.kill()
        RESULTS.state = f"cut at the {LIMIT_S:.0f} s limit"
        RESULTS.save()
        print(f"gpu_suite: cut at the {LIMIT_S:.0f} s limit; results in {ARGS.out}", flush=True)
        os._exit(3)

    timer = threading.Timer(LIMIT_S - (time.monotonic() - START), stop)
    timer.daemon = True
    timer.start()


def git_commit() -> str:
    """$NTM_FAST_COMMIT if set (a tree copied onto the GPU machine may carry a .git of another commit), else
    `git rev-parse HEAD` (+ "-dirty")."""
    if os.environ.get("NTM_FAST_COMMIT"):
        return os.environ["NTM_FAST_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown (no git checkout and no $NTM_FAST_COMMIT)"


def environment() -> list:
    info = bench.environment(ARGS.device)
    sequence = sys.modules.get("ntm_fast.kernels.sequence")
    RESULTS.meta = {**info, "commit": git_commit(), "ntm_fast": ntm_fast.__version__, "dry_run": ARGS.dry_run,
                    "budget_s": LIMIT_S, "settings": dataclasses.asdict(S), "step_batches": STEP_BATCHES,
                    "op_sizes": SIZES, "command": "python " + " ".join(sys.argv)}
    lines = [f"{k}: {v}" for k, v in info.items()] + [f"commit: {RESULTS.meta['commit']}",
                                                        f"ntm_fast: {ntm_fast.__version__}"]
    if sequence is not None:
        lines.append(f"sequence kernels: forward {sequence.kernel_settings('forward')}, "
                     f"backward {sequence.kernel_settings('backward')}")
    if ARGS.dry_run:
        lines.append("dry run: Triton interpreter, tiny sizes, torch.compile with the eager backend")
    if torch.cuda.is_available():
        lines.append(f"cuda: {torch.version.cuda}")
    device_type = torch.device(ARGS.device).type
    ready = [n for n in BACKENDS if n != "cuda" and unavailable_reason(n, device_type) is None]
    lines.append(f"backends for {ARGS.device}: {', '.join(ready)} (cuda: see below)")
    return lines


# ---- cases: bench.run_contender checks each contender against the reference, then times it ---------------
def run_case(contender, case, keep):
    """Check and time `contender` on `case` if more than `keep` seconds are left; record the row."""
    if left_s() < keep:
        row = {**dataclasses.asdict(case), "contender": contender, "status": "skipped (time budget)"}
    elif contender in VARIANTS:  # the sequence node with the variant's environment while it runs
        os.environ.update(VARIANTS[contender])
        try:
            row = {**bench.run_contender("triton", [case], S)[0], "contender": contender}
        finally:
            for name in VARIANTS[contender]:
                del os.environ[name]
    else:
        row = bench.run_contender(contender, [case], S)[0]
    if ARGS.device == "cuda" and row["status"].startswith("error"):
        torch.cuda.empty_cache()  # an out-of-memory case must not cost the next ones
    RESULTS.add(row)
    print(f"{row['op']} {row['mode']} B={row['batch']} N={row['slots']} {contender}: "
          + (f"{row['median_ms']:.3f} ms" if row["status"] == "ok" else row["status"]), flush=True)
    return row


def step_part():
    """Eager contenders at every batch size (smallest first), then torch.compile(reference) at each."""
    cases = [Case(STEP, "fwd+bwd", B, STEP_SLOTS) for B in STEP_BATCHES]
    for case in cases:
        for contender in STEP_CONTENDERS + (CUDA if cuda_ready() else []):
            run_case(contender, case, KEEP["step"])
    compiled = False
    for case in cases:  # the first case compiles; dynamic shapes serve the others
        row = run_case(COMPILE, case, KEEP["compile step"] + (0 if compiled else COMPILE_S))
        compiled = compiled or row["status"] != "skipped (time budget)"


def op_part():
    """Every eager contender on a case in a row (op_inputs draws each size once); compile for memory_step."""
    for B, N in SIZES:
        for op in OP_ORDER:
            for mode in MODES:
                for contender in OP_CONTENDERS:
                    run_case(contender, Case(op, mode, B, N), KEEP["ops"])
    compiled = set()
    for B, N in SIZES:
        for mode in MODES:
            first = mode not in compiled
            row = run_case(COMPILE, Case("memory_step", mode, B, N), KEEP["ops"] + (COMPILE_S if first else 0))
            if row["status"] != "skipped (time budget)":
                compiled.add(mode)


def run_pytest(name, argv, timeout, env=None):
    """pytest in a subprocess with its own timeout (and `env` added to its environment); its summary line (the
    output goes to pytest_<name>.txt). Verbose, so that a run cut by its timeout still names the tests that
    failed before the cut."""
    if timeout < 20:
        return f"{name}: skipped (time budget)"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-rf", "--tb=line", "-p", "no:cacheprovider",
                             *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    CHILDREN.append(proc)  # the watchdog ends it with this process
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        status = f"timed out after {timeout:.0f} s"
    CHILDREN.remove(proc)
    with open(os.path.join(ARGS.out, f"pytest_{name}.txt"), "w") as f:
        f.write(output)
    lines = output.splitlines()
    summary = [line for line in lines if " passed" in line or " failed" in line or "error" in line]
    passed = sum(" PASSED" in line for line in lines)
    failed = [line.split(" ")[0] for line in lines if " FAILED" in line and "::" in line]
    named = f"; failed: {', '.join(failed[:8])}{' ...' if len(failed) > 8 else ''}" if failed else ""
    return f"{name}: {status}; {summary[-1] if summary else f'no summary ({passed} passed before the cut)'}{named}"


def test_part():
    if ARGS.dry_run:
        RESULTS.tests.append("skipped in a dry run")
        return
    # The sequence node first: its CUDA tests (the default model against the reference, with the GPU's
    # settings), then its interpreter suite on CUDA tensors with the compiled kernels.
    RESULTS.tests.append(run_pytest("sequence_gpu", ["tests/test_triton_sequence.py", "-m", "gpu"],
                                    timeout=min(75, left_s() - KEEP["tests"])))
    RESULTS.save()
    RESULTS.tests.append(run_pytest("sequence_cuda", ["tests/test_triton_sequence.py", "-m", "not gpu", "--maxfail=3"],
                                    timeout=min(90, left_s() - KEEP["tests"])))
    RESULTS.save()
    # The float32 adversarial cases that failed on the first GPU run (benchmarks/RESULTS.md, "GPU ops").
    RESULTS.tests.append(run_pytest("first_run_failures", [
        "tests/test_backend_equivalence.py", "tests/test_triton.py", "-m", "gpu or not gpu", "-k",
        "(test_address and M1 and f32 and (triton or cuda)) or (test_gpu_memory_step_large and extreme and f32)"],
        timeout=min(60, left_s() - KEEP["tests"])))
    RESULTS.save()
    # The same largest memory_step cases with Triton's fused multiply-adds off: whether contraction is what
    # moves them past the bound on a GPU (the interpreter, exact or with tl.exp made as approximate as
    # ex2.approx.f32, keeps the read head's ∂β within it at B=4096, N=128; the H200 was 80x over).
    RESULTS.tests.append(run_pytest("first_run_failures_no_fma", [
        "tests/test_triton.py", "-m", "gpu", "-k", "test_gpu_memory_step_large and extreme and B4096"],
        timeout=min(45, left_s() - KEEP["tests"]), env={"TRITON_DEFAULT_FP_FUSION": "0"}))
    RESULTS.save()
    RESULTS.tests.append(run_pytest("gpu", ["-m", "gpu", "tests", "--ignore=tests/test_compile_sm90.py",
                                            "--ignore=tests/test_triton_sequence.py"],
                                    timeout=min(150, left_s() - KEEP["tests"])))
    RESULTS.save()


# ---- launches and bandwidth (after the per-op tables) ------------------------------------------------------
def launch_counts():
    """Kernel launches per call: Triton kernels launched vs the reference's aten ops (views excluded,
    they launch nothing), forward and backward, at the first op size, on bench's op inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AtenCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.count += 1
            return func(*args, **(kwargs or {}))

    kernel_type = type(sys.modules["ntm_fast.kernels.memory_step"]._memory_step_fwd_kernel)
    launches = []
    run = kernel_type.run

    def counting_run(self, *args, **kwargs):
        launches.append(self.fn.__name__)
        return run(self, *args, **kwargs)

    kernel_type.run = counting_run
    lines = ["| op | reference aten ops fwd | bwd | triton kernels fwd | bwd | triton launcher aten ops fwd | bwd "
             "(allocations; + interpreter copies in a dry run) |", "|---|---|---|---|---|---|---|"]
    B, N = SIZES[0]
    try:
        for op in OPS:
            counts = {}
            for backend in ("reference", "triton"):
                ops = resolved_ops(backend, torch.device(ARGS.device).type)
                leaves = [x.requires_grad_() for x in bench.op_inputs(op, B, N, S)]
                launches.clear()
                with AtenCounter() as fwd_ops:
                    outs = OP_CALLS[op](ops, *leaves)
                outs = outs if isinstance(outs, tuple) else (outs,)
                fwd_launches = len(launches)
                with AtenCounter() as bwd_ops:
                    torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True)
                counts[backend] = (fwd_ops.count, bwd_ops.count, fwd_launches, len(launches) - fwd_launches)
            ref, tri = counts["reference"], counts["triton"]
            lines.append(f"| {op} | {ref[0]} | {ref[1]} | {tri[2]} | {tri[3]} | {tri[0]} | {tri[1]} |")
    finally:
        kernel_type.run = run
    return lines


def bandwidth_lines(rows):
    """memory_step bytes of memory moved per step / time at the largest batch: forward reads M_{t-1} and
    writes M_t (2 memory tensors); forward+backward adds reading M_{t-1} and dL/dM_t and writing dL/dM_{t-1}
    (5 in all). Head tensors and on-chip re-reads are not counted. Against the device-to-device copy
    bandwidth (read + write) of 1 GiB (a small buffer in a dry run)."""
    src = torch.empty(2**28 if ARGS.device == "cuda" else 2**20, dtype=torch.float32, device=ARGS.device)
    dst = torch.empty_like(src)
    timing = bench.measure(lambda: dst.copy_(src), ARGS.device, warmup=S.warmup, reps=S.reps, budget_s=S.budget_s)
    copy = 2 * src.numel() * 4 / timing.median_s / 1e9
    B_max = max(B for B, _ in SIZES)
    lines = ["| mode | B | N | contender | ms | GB/s | of copy bandwidth |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["op"] == "memory_step" and r["batch"] == B_max and r["status"] == "ok":
            tensors = 2 if r["mode"] == "fwd" else 5
            gbs = tensors * r["batch"] * r["slots"] * S.width * 4 / (r["median_ms"] / 1e3) / 1e9
            lines.append(f"| {r['mode']} | {r['batch']} | {r['slots']} | {r['contender']} | {r['median_ms']:.3f} | "
                         f"{gbs:.1f} | {gbs / copy:.0%} |")
    lines.append(f"\ncopy bandwidth (torch copy_, {src.numel() * 4 / 2**20:.0f} MiB): {copy:.0f} GB/s")
    return lines


# ---- tables --------------------------------------------------------------------------------------------------
def cell(row, fmt=".3f"):
    if row is None:
        return "-"
    if row["status"] == "ok":
        return format(row["median_ms"], fmt)
    return row["status"].replace("|", "/")[:70]


def ratio(got, slow, fast):
    """How many times faster `fast` ran than `slow` (both names of contenders in `got`), or '-'."""
    a, b = got.get(slow), got.get(fast)
    ok = a is not None and b is not None and a["status"] == b["status"] == "ok"
    return f"{a['median_ms'] / b['median_ms']:.2f}x" if ok else "-"


def step_tables(rows):
    """Every step row, then the sequence node's ratios at each batch size."""
    names = [*STEP_CONTENDERS, *CUDA, COMPILE]
    lines = ["| B | contender | runs as | ms/step | sequences/s | vs reference | compile s |",
             "|---|---|---|---|---|---|---|"]
    by_batch = {}
    for r in sorted((r for r in rows if r["op"] == STEP),
                    key=lambda r: (r["batch"], names.index(r["contender"]))):
        by_batch.setdefault(r["batch"], {})[r["contender"]] = r
        seq = per_s(r)
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else ""
        lines.append(f"| {r['batch']} | {r['contender']} | {r.get('runs_as', '-')} | {cell(r, '.2f')} | {seq} | "
                     f"{speedup} | {compile_s} |")
    lines += ["", "The sequence node (`triton`) against the others, same run (times faster):", "",
              "| B | sequences/s | vs triton-ieee | vs triton-tf32 | vs triton-rows8 | vs triton-per-step | "
              "vs reference | vs torch.compile(reference) |"
              + (" vs cuda |" if CUDA else ""), "|---|---|---|---|---|---|---|" + ("---|" if CUDA else "") + "---|"]
    for B, got in by_batch.items():
        node = got.get("triton")
        seq = per_s(node) if node else "-"
        others = [IEEE, TF32, ROWS8, "triton" + PER_STEP, "reference", COMPILE, *CUDA]
        lines.append(f"| {B} | {seq} | " + " | ".join(ratio(got, o, "triton") for o in others) + " |")
    lines += ["", f"`{IEEE}` and `{TF32}`: the sequence node with every float32 `tl.dot` in IEEE float32 or tf32 "
              "(NTM_FAST_DOT_PRECISION; by default the forward's are tf32x3 and the backward's IEEE); "
              f"`{ROWS8}`: programs of 8 batch rows instead of 16 in both kernels (`rows=8`); "
              "`triton-per-step`: the same model with `fuse_sequence = False` (one time step at a time, the "
              "per-op kernels); compile s: the first call's seconds beyond the median (the compilation; dynamic "
              "shapes, so later sizes reuse it)."]
    return lines


def op_tables(rows):
    """One markdown table per (op, mode) reached: rows B x N, columns ms per contender and triton's ratios."""
    lines, names = [], ["reference", COMPILE, *OP_CONTENDERS[1:]]
    for op in OP_ORDER:
        for mode in MODES:
            if not any((r["op"], r["mode"]) == (op, mode) for r in rows):
                continue
            lines += [f"\n### {op}, {mode} (ms, median)\n",
                      "| B | N | " + " | ".join(names) + " | triton vs reference | triton vs compile |",
                      "|---|---|" + "---|" * (len(names) + 2)]
            for B, N in SIZES:
                got = {r["contender"]: r for r in rows
                       if (r["op"], r["mode"], r["batch"], r["slots"]) == (op, mode, B, N)}
                lines.append(f"| {B} | {N} | " + " | ".join([cell(got.get(n)) for n in names]
                                                          + [ratio(got, "reference", "triton"),
                                                             ratio(got, COMPILE, "triton")]) + " |")
    checked = {}
    for r in rows:
        if r["status"] == "ok" and r["contender"] != "reference":
            checked[r["contender"]] = max(checked.get(r["contender"], 0.0), r["max_error"])
    lines += ["", "Every timed row (step and ops) agreed with the reference first (rtol 1e-4, atol 1e-5; step "
              "1e-3, 1e-4); largest max abs error: " + (", ".join(f"{c} {e:.2g}" for c, e in checked.items()) or "-")]
    return lines


def main():
    os.makedirs(ARGS.out, exist_ok=True)
    watchdog()
    CUDA_BUILD.start()
    RESULTS.environment = environment()
    RESULTS.save()
    print("\n".join(RESULTS.environment), flush=True)
    step_part()
    cuda_ready()  # the op tables include cuda if it built
    test_part()
    print("\n".join(RESULTS.tests), flush=True)
    op_part()
    if left_s() > 0:
        RESULTS.extra += ["", "## Launches per call", ""] + launch_counts()
        RESULTS.save()
    if left_s() > 0:
        RESULTS.extra += ["", "## memory_step bandwidth at the largest batch", ""] + bandwidth_lines(RESULTS.rows)
    RESULTS.state = f"complete in {time.monotonic() - START:.0f} s"
    RESULTS.save()
    print(RESULTS.markdown(), flush=True)


if __name__ == "__main__":
    main()
