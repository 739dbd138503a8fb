"""Where the sequence node's training step goes on a GPU: forward alone (no tape) vs forward with the tape vs
forward+backward, the default model (copy L=20: T=41), B in {256, 1024, 4096}.

    python benchmarks/sequence_split.py            # CUDA; prints a table (triton.testing.do_bench medians)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import triton.testing  # noqa: E402

from ntm_fast.tools import bench  # noqa: E402
from ntm_fast.tools.bench import STEP, Case  # noqa: E402

s = bench.Settings(device="cuda")
print("| B | fwd no grad ms | fwd with tape ms | fwd+bwd ms | step (+clip, RMSprop) ms |")
print("|---|---|---|---|---|")
for B in (256, 1024, 4096):
    trainer, batch = bench.step_case("triton", Case(STEP, "fwd+bwd", B, 128), s)
    model, x = trainer.model, batch.inputs

    def fwd_nograd():
        with torch.no_grad():
            model(x)

    def fwd_tape():
        return model(x)

    def fwd_bwd():
        model(x).sum().backward()

    train_step = bench.training_step(trainer, batch)[0]
    times = [triton.testing.do_bench(f, return_mode="median") for f in (fwd_nograd, fwd_tape, fwd_bwd)]
    step = triton.testing.do_bench(train_step, return_mode="median")
    print(f"| {B} | " + " | ".join(f"{t:.2f}" for t in times) + f" | {step:.2f} |", flush=True)
