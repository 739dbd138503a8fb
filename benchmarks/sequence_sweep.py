"""The sequence node's kernels under other tiles and warps on a GPU: forward and backward timed apart.

    python benchmarks/sequence_sweep.py [OUT_DIR] [--batch-sizes 1024 4096] [--limit S]
                                        [--forward SETTING ...] [--backward SETTING ...]
    python benchmarks/sequence_sweep.py OUT_DIR --dry-run   # CPU, Triton interpreter, tiny sizes

A SETTING is what NTM_FAST_SEQUENCE_FORWARD / NTM_FAST_SEQUENCE_BACKWARD take (kernels/sequence.py,
kernel_settings), e.g. "memory=2048,cols=64,warps=16,precision=tf32"; "" is the default. The model is the
default one (copy L=20: T=41, LSTM 100, N=128, M=20, one read and one write head), float32. For each batch
size and setting: the forward with its tape (`model(x)`, the forward kernel) and the backward alone
(autograd.grad of the logits, retain_graph: the backward kernel and its weight-gradient GEMMs), medians of
`triton.testing.do_bench` (bench.measure); the other kernel keeps its default. Each setting's logits and
gradients are first compared with the default's, and the default's with the eager reference's (same weights
and batch; the largest difference relative to 1 + |reference| goes into the notes): a setting that
disagrees is reported, not timed. Every setting is compiled first, in parallel processes that fill
Triton's cache (tiny batch: B is a runtime argument), so the timed process only loads them.

OUT_DIR/sweep.md (the table) and sweep.json are rewritten after every row; a watchdog ends the run at
--limit, so a cut run still leaves what it measured.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

START = time.monotonic()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The settings timed by default, each beside the default ("" first). Chosen from compile_report-style
# compiles for sm_90 (float32, default model): the ones that do not spill, and the nearest that do. The LSTM's
# four gate products in one walk (gates=4) spill none under triton 3.6. Programs of 8 rows (rows=8: B=1024
# fills 128 SMs instead of 64) spill nothing in the forward; the backward's spill none under triton 3.6 with
# 8 warps over 2048-element tiles. Pipelined loops (stages=2: the products' next loads prefetched) spill 24
# bytes in the forward under triton 3.6, the backward's 248 as at its default.
# The candidates not yet timed come first (a run cut at --limit keeps them), then the earlier sweeps' ones.
FORWARD = ["", "gates=4", "rows=8", "stages=2", "gates=4,stages=2", "rows=8,gates=4", "gates=4,cols=64,depth=32",
           "depth=32", "precision=tf32", "precision=ieee", "cols=64,depth=64,precision=ieee"]
BACKWARD = ["", "rows=8", "rows=8,warps=8,memory=2048", "stages=2", "memory=2048", "memory=1024,warps=8",
            "memory=8192"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "sequence_sweep_out"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--forward", nargs="*", default=None, help="forward settings (default: a prepared list)")
    parser.add_argument("--backward", nargs="*", default=None, help="backward settings (default: a prepared list)")
    parser.add_argument("--limit", type=float, default=240, help="seconds before the watchdog ends the run")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny sizes, no compile step")
    parser.add_argument("--compile-only", nargs=2, metavar=("KERNEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.limit <= 0:
        parser.error(f"--limit must be a positive number of seconds, got {args.limit}")
    return args


ARGS = parse_args()

import torch  # noqa: E402
import triton  # noqa: E402

from ntm_fast.ops.dispatch import import_kernels  # noqa: E402
from ntm_fast.tools import bench  # noqa: E402
from ntm_fast.tools.bench import STEP, Case  # noqa: E402

import_kernels()  # kernels/ as ntm_fast.kernels, installed or from this checkout
sequence = importlib.import_module("ntm_fast.kernels.sequence")
SETTINGS = (bench.Settings(device="cpu", width=4, controller_size=8, length=1) if ARGS.dry_run
            else bench.Settings(device="cuda"))
SLOTS = 8 if ARGS.dry_run else 128


def model_and_batch(batch_size: int):
    trainer, batch = bench.step_case("triton", Case(STEP, "fwd+bwd", batch_size, SLOTS), SETTINGS)
    return trainer.model, batch.inputs


def with_setting(kernel: str, setting: str):
    """Set the kernel's environment variable to `setting` (the other one, and NTM_FAST_DOT_PRECISION, cleared)."""
    for name in (*sequence.SETTINGS_ENV.values(), "NTM_FAST_DOT_PRECISION"):
        os.environ.pop(name, None)
    if setting:
        os.environ[sequence.SETTINGS_ENV[kernel]] = setting


def run_once(model, x, kernel: str, setting: str):
    """(logits, gradients of every parameter) under the setting, and the backward as a callable."""
    with_setting(kernel, setting)
    logits = model(x)
    grad = torch.ones_like(logits) / logits.numel()
    params = [p for p in model.parameters() if p.requires_grad]

    def backward():
        return torch.autograd.grad(logits, params, grad, retain_graph=True)

    return logits.detach(), backward(), backward


def compile_only(kernel: str, setting: str):
    model, x = model_and_batch(16)
    run_once(model, x, kernel, setting)
    torch.cuda.synchronize()


if ARGS.compile_only:
    compile_only(*ARGS.compile_only)
    sys.exit(0)


class Results:
    def __init__(self, out: str):
        self.out, self.rows, self.notes = out, [], []
        os.makedirs(out, exist_ok=True)

    def add(self, **row):
        self.rows.append(row)
        self.write()

    def write(self):
        lines = ["| kernel | setting | B | ms | µs per time step | default / this | max diff vs default |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        default = {(r["kernel"], r["batch"]): r["ms"] for r in self.rows if r["setting"] == "" and r["ms"]}
        for r in self.rows:
            base = default.get((r["kernel"], r["batch"]))
            ms = f"{r['ms']:.2f}" if r["ms"] else r["status"]
            step = f"{1000 * r['ms'] / r['steps']:.0f}" if r["ms"] else ""
            ratio = f"{base / r['ms']:.2f}×" if r["ms"] and base else ""
            lines.append(f"| {r['kernel']} | {r['setting'] or 'default'} | {r['batch']} | {ms} | {step} | {ratio} "
                         f"| {r['diff']:.1e} |")
        text = "\n".join(self.notes + [""] + lines) + "\n"
        with open(os.path.join(self.out, "sweep.md"), "w") as handle:
            handle.write(text)
        with open(os.path.join(self.out, "sweep.json"), "w") as handle:
            json.dump({"notes": self.notes, "rows": self.rows}, handle, indent=1)


def max_difference(got, want) -> float:
    """Largest |got - want| / (1 + |want|) over the logits and every gradient."""
    return max(((g.double() - w.double()).abs() / (1 + w.double().abs())).max().item() for g, w in zip(got, want))


def main():
    results = Results(ARGS.out)
    watchdog = threading.Timer(ARGS.limit, lambda: (results.notes.append(f"cut at --limit {ARGS.limit:.0f} s"),
                                                     results.write(), os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    forward = ARGS.forward if ARGS.forward is not None else FORWARD
    backward = ARGS.backward if ARGS.backward is not None else BACKWARD
    settings = [("forward", s) for s in dict.fromkeys([""] + forward)] + \
               [("backward", s) for s in dict.fromkeys([""] + backward)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results.notes += [f"{device}; torch {torch.__version__}, triton {triton.__version__}; "
                      f"defaults forward {sequence.FORWARD_SETTINGS}, backward {sequence.BACKWARD_SETTINGS}"]
    if not ARGS.dry_run:  # fill Triton's cache in parallel processes
        started = time.monotonic()

        def warm(item):
            kernel, setting = item
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-only", kernel, setting],
                                  capture_output=True, text=True)
            return item, done.returncode, done.stderr[-400:]

        with ThreadPoolExecutor(ARGS.jobs) as pool:
            for (kernel, setting), code, err in pool.map(warm, settings):
                if code:
                    results.notes.append(f"compile of {kernel} {setting!r} failed: {err.strip()}")
        results.notes.append(f"compiled {len(settings)} settings in {time.monotonic() - started:.0f} s "
                             f"({ARGS.jobs} processes)")
        results.write()
    for batch_size in ARGS.batch_sizes:
        model, x = model_and_batch(batch_size)
        steps = x.shape[0]
        want_logits, want_grads, _ = run_once(model, x, "forward", "")
        if batch_size == ARGS.batch_sizes[0]:
            reference, _ = bench.step_case("reference", Case(STEP, "fwd+bwd", batch_size, SLOTS), SETTINGS)
            ref_logits, ref_grads, _ = run_once(reference.model, x, "forward", "")
            results.notes.append(f"default against the eager reference at B={batch_size}: largest difference "
                                 f"{max_difference([want_logits, *want_grads], [ref_logits, *ref_grads]):.1e} "
                                 f"(logits and every parameter gradient, relative to 1 + |reference|)")
            del reference
        for kernel, setting in settings:
            try:
                logits, grads, backward = run_once(model, x, kernel, setting)
            except Exception as error:  # noqa: BLE001  (a setting that fails to compile or launch)
                results.add(kernel=kernel, setting=setting, batch=batch_size, steps=steps, ms=None,
                            status=f"failed: {type(error).__name__}: {str(error)[:120]}", diff=float("nan"))
                continue
            diff = max_difference([logits, *grads], [want_logits, *want_grads])
            if diff > (5e-2 if "precision=" in setting else 1e-3):  # tf32 rounds products to 10-bit mantissas
                results.add(kernel=kernel, setting=setting, batch=batch_size, steps=steps, ms=None,
                            status="disagrees", diff=diff)
                continue
            timed = (lambda: model(x)) if kernel == "forward" else backward
            ms = 1e3 * bench.measure(timed, SETTINGS.device, warmup=0, reps=1).median_s  # CUDA: do_bench
            results.add(kernel=kernel, setting=setting, batch=batch_size, steps=steps, ms=ms, status="ok", diff=diff)
            print(f"{kernel} {setting or 'default'} B={batch_size}: {ms:.2f} ms", flush=True)
    with_setting("forward", "")
    results.notes.append(f"done in {time.monotonic() - START:.0f} s")
    results.write()


if __name__ == "__main__":
    main()
