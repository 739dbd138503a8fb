"""The C++ backend's training step with the whole sequence as one fused autograd node (FusedSequence, what
NTM.forward uses) against one fused node per time step (FusedStep, NTMCell.forward called step by step).

    python benchmarks/cpu_sequence.py                        # B = 1, 32, 256; 2 threads; 20 steps each
    python benchmarks/cpu_sequence.py --batch-sizes 256 --reps 40

Both run in one process on one model and batch (copy task, L=20, the default model), alternating step by
step, so that a noisy machine slows both alike; it prints the median and minimum of each and the ratio of
the medians. Their gradients are checked to agree before timing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout


def per_step(cell, x, state):
    """The logits [T, B, Y] through NTMCell.forward, one fused node per step."""
    logits = []
    for x_t in x:
        y_t, state = cell(x_t, state)
        logits.append(y_t)
    return torch.stack(logits)


def time_both(batch_size: int, reps: int, length: int) -> dict:
    """{mode: [seconds per training step]} for 'sequence' and 'per-step', alternating."""
    from ntm_fast.model import fused
    from ntm_fast.tools.bench import step_trainer, training_step

    model = dict(controller_size=100, memory_slots=128, memory_width=20, read_heads=1, write_heads=1,
                 shift_range=1)
    trainer = step_trainer("cpp", batch_size, "cpu", model=model, seed=0)
    if not fused.usable(trainer.model.cell, torch.zeros(1, trainer.model.cell.input_size)):
        raise SystemExit("cpu_sequence.py: the cpp backend is unavailable here")
    batch = trainer.task.sample(batch_size, length, torch.Generator().manual_seed(0))
    train_step, gradients, _ = training_step(trainer, batch)
    modes = {"sequence": fused.sequence, "per-step": per_step}
    real = fused.sequence
    try:
        grads = {}
        for name, fn in modes.items():
            fused.sequence = fn
            grads[name] = [g.clone() for g in gradients()]
        for a, b in zip(grads["sequence"], grads["per-step"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        times = {name: [] for name in modes}
        for _ in range(2):  # warm-up
            for fn in modes.values():
                fused.sequence = fn
                train_step()
        for _ in range(reps):
            for name, fn in modes.items():
                fused.sequence = fn
                start = time.perf_counter()
                train_step()
                times[name].append(time.perf_counter() - start)
    finally:
        fused.sequence = real
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--reps", type=int, default=20, help="timed training steps per mode and batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=20, help="copy-task length L (T = 2L + 1 steps)")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.reps < 1 or args.threads < 1 or args.length < 1:
        parser.error("--batch-sizes, --reps, --threads and --length must be at least 1")
    torch.set_num_threads(args.threads)
    print(f"cpp training step (copy L={args.length}), {args.threads} thread(s), {args.reps} alternating steps per "
          f"mode; ms median / min")
    for B in args.batch_sizes:
        times = time_both(B, args.reps, args.length)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        low = {k: min(v) * 1e3 for k, v in times.items()}
        print(f"B={B:<5} sequence {med['sequence']:8.2f} / {low['sequence']:8.2f}   per-step "
              f"{med['per-step']:8.2f} / {low['per-step']:8.2f}   per-step / sequence "
              f"{med['per-step'] / med['sequence']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
