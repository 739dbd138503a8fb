"""Kernel launches and ATen ops of one training step (forward, loss, backward) with the triton backend, with
the whole sequence as one node and step by step, at several sequence lengths.

    TRITON_INTERPRET=1 python benchmarks/launch_count.py            # on CPU tensors, under the interpreter
    python benchmarks/launch_count.py --device cuda                 # on a GPU

ATen ops are counted outside the Triton launches (the interpreter's own tensor traffic is not counted).
Model: the copy task's (LSTM 100, N=128, M=20, 1 read and 1 write head), batch 2 (the counts do not depend
on it).
"""
from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ntm_fast import NTM
from ntm_fast.ops.dispatch import import_kernels


class Counts(TorchDispatchMode):
    """ATen ops run inside it, except while a Triton kernel runs; and the Triton launches."""

    def __init__(self):
        super().__init__()
        self.aten, self.launches, self.in_kernel = 0, 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.aten += not self.in_kernel
        return func(*args, **(kwargs or {}))


def training_step_counts(model, T: int, device) -> tuple:
    """(Triton launches, ATen ops) of one training step of `model` on a length-T batch."""
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 2, model.cell.input_size, generator=g).to(device)
    target = torch.rand(T, 2, model.cell.output_size, generator=g).to(device)
    counts = Counts()
    kernel_type = type(import_kernels().sequence._sequence_fwd_kernel)  # JITFunction, or the interpreter's
    run = kernel_type.run

    def counted_run(self, *args, **kwargs):
        counts.launches += 1
        counts.in_kernel = True
        try:
            return run(self, *args, **kwargs)
        finally:
            counts.in_kernel = False

    model.zero_grad(set_to_none=True)
    kernel_type.run = counted_run
    try:
        with counts:
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
    finally:
        kernel_type.run = run
    return counts.launches, counts.aten


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (needs TRITON_INTERPRET=1) or cuda (default cpu)")
    p.add_argument("--lengths", type=int, nargs="+", default=[4, 8], help="time steps T (default 4 8)")
    a = p.parse_args(argv)
    if min(a.lengths) < 1:
        p.error(f"--lengths must be >= 1, got {min(a.lengths)}")
    import_kernels()
    model = NTM(9, 8, backend="triton").to(a.device)
    print("| path | T | Triton launches | ATen ops |\n| --- | --- | --- | --- |")
    for fuse in (False, True):
        model.fuse_sequence = fuse
        training_step_counts(model, a.lengths[0], a.device)  # warm-up: first-call allocations
        for T in a.lengths:
            launches, aten = training_step_counts(model, T, a.device)
            print(f"| {'sequence node' if fuse else 'per step'} | {T} | {launches} | {aten} |")


if __name__ == "__main__":
    main()
