"""Time the C++ extension's memory_step kernels alone (no autograd, outputs preallocated), per batch item.

    python benchmarks/cpu_kernels.py                       # B=256, 20 distinct memories (cold), 1 thread
    python benchmarks/cpu_kernels.py --batch 16 --memories 1   # everything in cache
    python benchmarks/cpu_kernels.py --csrc /path/to/old/csrc csrc --rounds 6   # A/B of two kernel trees

Each call runs memory_step_forward or memory_step_backward once over the batch, cycling through `--memories`
different slot-minor memories (and upstream gradients) as a recurrence does, so `--memories 20` at B=256
(52 MB) measures the kernels with their memory coming from DRAM, `--memories 1 --batch 16` with it in L1/L2:
the gap is the memory-access overhead. With several `--csrc` trees each is built (cached by content) and run
in its own process, alternately, `--rounds` times: on a shared VM the spread between rounds is often larger
than a kernel change, so compare the per-tree minimum and median, never two single runs.
Copy-task sizes: N=128, M=20, one read and one write head, shifts -1..1, float32.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_kernels(batch: int, memories: int, reps: int) -> dict:
    """Median and minimum microseconds per batch item of the forward and the backward kernel."""
    import torch

    from ntm_fast.ops import extension, reference

    ext = extension.build(False)
    # The addressing kernels take the reference's ε and sharpening floor (kernel trees before that did not).
    numerics = ((reference.COSINE_EPS, reference.sharpen_floor(torch.float32))
                if "cosine_eps" in (ext.memory_step_forward.__doc__ or "") else ())
    B, N, M, K, R, W, T = batch, 128, 20, 3, 1, 1, memories
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def heads(H):
        return [r(B, H, M), torch.rand(B, H, generator=g) * 5, torch.rand(B, H, generator=g),
                torch.softmax(r(B, H, K), -1), 1 + torch.rand(B, H, generator=g) * 3, torch.softmax(r(B, H, N), -1)]

    def slot_minor():
        return torch.empty(B, M, N).transpose(1, 2)

    mems = [(r(B, M, N) * 0.3).transpose(1, 2) for _ in range(T)]
    grads = [r(B, M, N).transpose(1, 2) for _ in range(T)]
    outs, d_mems = [slot_minor() for _ in range(T)], [slot_minor() for _ in range(T)]
    rh, wh = heads(R), heads(W)
    erase, add = torch.sigmoid(r(B, W, M)), r(B, W, M)
    reads, w_read, w_write = torch.empty(B, R, M), torch.empty(B, R, N), torch.empty(B, W, N)
    g_reads, g_w_read, g_w_write = r(B, R, M), r(B, R, N), r(B, W, N)
    d_rh, d_wh = [torch.empty_like(x) for x in rh], [torch.empty_like(x) for x in wh]
    d_erase, d_add = torch.empty_like(erase), torch.empty_like(add)

    def forward(t):
        ext.memory_step_forward(mems[t], rh, wh, erase, add, reads, w_read, w_write, outs[t], *numerics)

    def backward(t):
        ext.memory_step_backward(mems[t], rh, wh, erase, add, g_reads, g_w_read, g_w_write, grads[t], d_mems[t],
                                 d_rh, d_wh, d_erase, d_add, *numerics)

    result = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        for t in range(T):
            fn(t)  # warm-up
        per_item = []
        for _ in range(reps):
            start = time.perf_counter()
            for t in range(T):
                fn(t)
            per_item.append((time.perf_counter() - start) / T / B * 1e6)
        result[name] = (statistics.median(per_item), min(per_item))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--memories", type=int, default=20, help="distinct memories cycled through (default 20)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=9, help="timed passes over the memories per run")
    p.add_argument("--csrc", nargs="+", default=None, help="kernel source trees to compare (default: csrc/)")
    p.add_argument("--rounds", type=int, default=1, help="runs per tree, alternating (with --csrc)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name in ("batch", "memories", "threads", "reps", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.worker:  # one tree, in this process
        import torch

        from ntm_fast.ops import extension

        torch.set_num_threads(a.threads)
        extension.CSRC = os.path.abspath(a.csrc[0])
        res = time_kernels(a.batch, a.memories, a.reps)
        print(" ".join(f"{k} {med:.3f} {mn:.3f}" for k, (med, mn) in res.items()))
        return
    trees = [os.path.abspath(d) for d in (a.csrc or [os.path.join(ROOT, "csrc")])]
    for d in trees:
        if not os.path.isfile(os.path.join(d, "ntm_cpu.cpp")):
            p.error(f"--csrc: {d} has no ntm_cpu.cpp")
    runs = {d: {"forward": [], "backward": []} for d in trees}
    for _ in range(a.rounds):
        for d in trees:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--csrc", d, "--batch", str(a.batch),
                   "--memories", str(a.memories), "--threads", str(a.threads), "--reps", str(a.reps)]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{d}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
            fields = out.stdout.split()
            for k in range(0, len(fields), 3):
                runs[d][fields[k]].append((float(fields[k + 1]), float(fields[k + 2])))
    print(f"memory_step kernels, us per batch item: B={a.batch}, {a.memories} memories, {a.threads} thread(s), "
          f"{a.rounds} round(s) x {a.reps} reps")
    for d in trees:
        cells = []
        for k, v in runs[d].items():
            cells.append(f"{k} median {statistics.median(m for m, _ in v):.2f} min {min(mn for _, mn in v):.2f}")
        print(f"{d}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
