"""The prepared GPU run: tests and benchmarks of the Triton backend in one call of at most ~8 minutes.

    python benchmarks/gpu_suite.py [OUT_DIR]          # on the GPU machine (OUT_DIR defaults to $OUT)
    python benchmarks/gpu_suite.py OUT_DIR --dry-run  # CPU, Triton interpreter, tiny sizes: checks the script

It prints the environment, runs `pytest -m gpu` and the equivalence suite on CUDA, then times
reference (eager) vs torch.compile(reference) vs triton (vs cuda, when built) per op and per memory_step,
forward and forward+backward, B in {32, 256, 1024, 4096} x N in {128, 1024}, M=20, 1 read + 1 write head
(address covers both heads), with triton.testing.do_bench; then a whole NTM training step; then the
kernel-launch counts per step; and the memory bandwidth of memory_step at the largest batch. Markdown
tables go to stdout and OUT_DIR/results.md, rows to OUT_DIR/results.csv. A time budget keeps the run
inside the limit: rows it cannot reach are listed as skipped.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
BUDGET_S = 7.5 * 60
START = time.monotonic()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "gpu_suite_out"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny sizes, no pytest")
    args = parser.parse_args()
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dry_run = args.dry_run or args.device == "cpu"
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton kernels are defined
    return args


ARGS = parse_args()

import torch  # noqa: E402
import triton  # noqa: E402

import ntm_fast  # noqa: E402
from ntm_fast import ops, reference  # noqa: E402
from ntm_fast.backends import import_kernels  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
import cases  # noqa: E402

KERNELS = import_kernels()
M, S, R, W = 20, 1, 1, 1
SIZES = [(B, N) for N in (128, 1024) for B in (32, 256, 1024, 4096)]
if ARGS.dry_run:
    M, SIZES = 4, [(2, 8), (3, 8)]


def left_s():
    return BUDGET_S - (time.monotonic() - START)


def environment():
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S')}", f"python: {platform.python_version()}",
             f"torch: {torch.__version__}", f"triton: {triton.__version__}", f"ntm_fast: {ntm_fast.__version__}",
             f"device: {ARGS.device}" + (" (dry run: Triton interpreter)" if ARGS.dry_run else "")]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    lines.append(f"backends for {ARGS.device}: {', '.join(ntm_fast.available_backends(ARGS.device))}")
    return lines


def run_pytest(name, argv, timeout):
    """Run pytest in a subprocess; return its summary line (and write its output to OUT_DIR)."""
    if timeout < 30:
        return f"{name}: skipped (time budget)"
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        output, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as err:
        output, status = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), \
            f"timed out after {timeout:.0f} s"
    with open(os.path.join(ARGS.out, f"pytest_{name}.txt"), "w") as f:
        f.write(output)
    summary = [line for line in output.splitlines() if " passed" in line or " failed" in line or "error" in line]
    return f"{name}: {status}; {summary[-1] if summary else 'no summary'}"


# --- workloads ---------------------------------------------------------------------------------------

def op_inputs(op, B, N, dtype=torch.float32):
    device = ARGS.device
    if op == "address":
        return cases.address_inputs(B, N, M, R + W, S, dtype=dtype, device=device)
    if op == "read":
        return cases.read_inputs(B, N, M, R, dtype=dtype, device=device)
    if op == "write":
        return cases.write_inputs(B, N, M, W, dtype=dtype, device=device)
    return cases.memory_step_inputs(B, N, M, R, W, S, dtype=dtype, device=device)


def op_function(op, contender):
    """fn(**inputs) -> outputs tuple for one contender."""
    if contender == "compile":
        fn = getattr(reference, op)
        if ARGS.dry_run:  # inductor's C++ build would take minutes on the CPU; exercise the path only
            return torch.compile(fn, backend="eager", dynamic=True)
        return torch.compile(fn, dynamic=True)
    return lambda **kw: getattr(ops, op)(**kw, backend=contender)


def timed_call(op, contender, inputs, backward):
    """A zero-argument callable running the op (and its backward for fixed cotangents)."""
    fn = op_function(op, contender)
    leaves = [t.detach().clone().requires_grad_(backward) for t in cases.flat_tensors(inputs)]
    call = cases.rebuild(inputs, leaves)

    def forward():
        out = fn(**call)
        return out if isinstance(out, tuple) else (out,)

    if not backward:
        def run():
            with torch.no_grad():
                forward()
        return run
    cotangents = [torch.randn_like(o) for o in forward()]

    def run():
        torch.autograd.grad(forward(), leaves, cotangents, allow_unused=True)
    return run


def bench_ms(fn):
    """Median milliseconds per call."""
    if ARGS.device == "cuda":
        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def contenders():
    names = ["reference", "compile", "triton"]
    if "cuda" in ntm_fast.available_backends(ARGS.device):
        names.append("cuda")
    return names


def op_benchmarks(rows):
    for op in ("memory_step", "address", "read", "write"):
        for B, N in SIZES:
            for backward in (False, True):
                inputs = op_inputs(op, B, N)
                for contender in contenders():
                    row = dict(case=op, mode="fwd+bwd" if backward else "fwd", B=B, N=N, contender=contender)
                    if left_s() < 60:
                        row["ms"] = "skipped (time budget)"
                    else:
                        try:
                            row["ms"] = bench_ms(timed_call(op, contender, inputs, backward))
                        except Exception as err:  # a contender failing must not cost the other rows
                            row["ms"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
                    rows.append(row)
                    print(row, flush=True)


def training_step_benchmarks(rows):
    """Forward, loss, backward and an optimizer step of a default-size NTM (N=128, M=20, LSTM 100) on
    random copy-task-like data, T=20 steps; sequences per second."""
    T, X = (20, 9) if not ARGS.dry_run else (3, 3)
    sizes = (32, 256, 1024) if not ARGS.dry_run else (2,)
    model_kw = {} if not ARGS.dry_run else dict(controller_size=8, memory_slots=8, memory_width=M)
    for B in sizes:
        for contender in ("reference", "triton"):
            row = dict(case="train_step", mode="fwd+bwd+opt", B=B, N=model_kw.get("memory_slots", 128),
                       contender=contender)
            if left_s() < 30:
                row["ms"] = "skipped (time budget)"
                rows.append(row)
                continue
            torch.manual_seed(0)
            model = ntm_fast.NTM(X, X - 1, backend=contender, **model_kw).to(ARGS.device)
            opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
            x = torch.rand(T, B, X, device=ARGS.device)
            y = (torch.rand(T, B, X - 1, device=ARGS.device) > 0.5).float()

            def step():
                opt.zero_grad()
                torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
                opt.step()

            row["ms"] = bench_ms(step)
            row["seq/s"] = B / (row["ms"] / 1e3)
            rows.append(row)
            print(row, flush=True)


def launch_counts():
    """Kernel launches per call: Triton kernels launched vs the reference's aten ops (views excluded,
    they launch nothing), forward and backward, at the first benchmark size."""
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
    lines = ["| op | reference aten ops fwd | bwd | triton kernels fwd | bwd | triton launcher aten ops fwd | bwd (allocations; + interpreter copies in a dry run) |",
             "|---|---|---|---|---|---|---|"]
    B, N = SIZES[0]
    try:
        for op in ("address", "read", "write", "memory_step"):
            counts = {}
            for backend in ("reference", "triton"):
                inputs = op_inputs(op, B, N)
                leaves = [t.detach().clone().requires_grad_(True) for t in cases.flat_tensors(inputs)]
                launches.clear()
                with AtenCounter() as fwd_ops:
                    outs = getattr(ops, op)(**cases.rebuild(inputs, leaves), backend=backend)
                outs = outs if isinstance(outs, tuple) else (outs,)
                fwd_launches = len(launches)
                cotangents = [torch.ones_like(o) for o in outs]
                with AtenCounter() as bwd_ops:
                    torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)
                counts[backend] = (fwd_ops.count, bwd_ops.count, fwd_launches, len(launches) - fwd_launches)
            ref, tri = counts["reference"], counts["triton"]
            lines.append(f"| {op} | {ref[0]} | {ref[1]} | {tri[2]} | {tri[3]} | {tri[0]} | {tri[1]} |")
    finally:
        kernel_type.run = run
    return lines


def copy_bandwidth_gbs():
    """The card's device-to-device copy bandwidth (GB/s, read + write) on a 1 GiB buffer."""
    if ARGS.device != "cuda":
        return None
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (bench_ms(lambda: dst.copy_(src)) / 1e3) / 1e9


def bandwidth_lines(rows):
    """memory_step bytes of memory moved per step / time at the largest batch: forward reads M_{t-1} and
    writes M_t (2 memory tensors); forward+backward adds reading M_{t-1} and ∂L/∂M_t and writing ∂L/∂M_{t-1}
    (5 in all). Head tensors and on-chip re-reads are not counted."""
    copy = copy_bandwidth_gbs()
    B_max = max(B for B, _ in SIZES)
    lines = ["| mode | B | N | contender | ms | GB/s | of copy bandwidth |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["case"] != "memory_step" or row["B"] != B_max or not isinstance(row["ms"], float):
            continue
        tensors = 2 if row["mode"] == "fwd" else 5
        gbs = tensors * row["B"] * row["N"] * M * 4 / (row["ms"] / 1e3) / 1e9
        share = f"{gbs / copy:.0%}" if copy else "n/a"
        lines.append(f"| {row['mode']} | {row['B']} | {row['N']} | {row['contender']} | {row['ms']:.3f} | "
                     f"{gbs:.0f} | {share} |")
    if copy:
        lines.append(f"\ncopy bandwidth (torch copy_, 1 GiB): {copy:.0f} GB/s")
    return lines


def op_tables(rows):
    """One markdown table per (case, mode): rows B x N, columns ms per contender and speedups of triton."""
    lines = []
    names = contenders()
    for case in ("memory_step", "address", "read", "write"):
        for mode in ("fwd", "fwd+bwd"):
            lines += [f"\n### {case}, {mode} (ms, median)\n",
                      "| B | N | " + " | ".join(names) + " | triton vs reference | triton vs compile |",
                      "|---|---|" + "---|" * (len(names) + 2)]
            for B, N in SIZES:
                got = {r["contender"]: r["ms"] for r in rows if (r["case"], r["mode"], r["B"], r["N"]) == (case, mode, B, N)}
                cells = [f"{got[n]:.3f}" if isinstance(got.get(n), float) else str(got.get(n, "-")) for n in names]
                ratios = [f"{got[base] / got['triton']:.1f}x"
                          if isinstance(got.get(base), float) and isinstance(got.get("triton"), float) else "-"
                          for base in ("reference", "compile")]
                lines.append(f"| {B} | {N} | " + " | ".join(cells + ratios) + " |")
    return lines


def train_table(rows):
    lines = ["| B | contender | ms/step | sequences/s |", "|---|---|---|---|"]
    for r in rows:
        if r["case"] == "train_step":
            ms = f"{r['ms']:.2f}" if isinstance(r["ms"], float) else r["ms"]
            lines.append(f"| {r['B']} | {r['contender']} | {ms} | {r.get('seq/s', 0):.0f} |")
    return lines


def main():
    os.makedirs(ARGS.out, exist_ok=True)
    report = ["# ntm_fast Triton backend: GPU suite", ""] + [f"- {line}" for line in environment()]
    print("\n".join(report), flush=True)

    report += ["", "## Tests", ""]
    if ARGS.dry_run:
        report.append("- skipped in a dry run")
    else:
        report.append("- " + run_pytest("gpu", ["-m", "gpu", "tests/test_triton.py"], timeout=min(150, left_s() - 240)))
        report.append("- " + run_pytest("equivalence_triton", ["tests/test_backend_equivalence.py", "-k", "triton"],
                                        timeout=min(120, left_s() - 200)))
    print("\n".join(report[-3:]), flush=True)

    rows = []
    op_benchmarks(rows)
    training_step_benchmarks(rows)
    report += ["", "## Ops: reference vs torch.compile(reference) vs triton",
               f"M={M}, S={S}, {R} read + {W} write head (address: both heads), float32"] + op_tables(rows)
    report += ["", "## Whole training step (T=20, N=128, M=20, LSTM 100, RMSprop)", ""] + train_table(rows)
    report += ["", "## Launches per call", ""] + launch_counts()
    report += ["", "## memory_step bandwidth at the largest batch", ""] + bandwidth_lines(rows)
    report += ["", f"total wall time: {time.monotonic() - START:.0f} s"]

    text = "\n".join(report) + "\n"
    print(text)
    with open(os.path.join(ARGS.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(ARGS.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "mode", "B", "N", "contender", "ms", "seq/s"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
