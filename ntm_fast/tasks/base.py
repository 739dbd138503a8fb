"""What every task provides: batched, seeded sequence generation, the loss and the error metric."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class Batch:
    """inputs [T, B, X]; targets [T, B, Y]; mask [T, B] (True where the output is scored)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def to(self, device, dtype=None):
        return Batch(self.inputs.to(device, dtype), self.targets.to(device, dtype), self.mask.to(device))


class Task:
    """Base class. Subclasses set `name`, `input_size`, `output_size`, `train_lengths` (min, max),
    `eval_lengths` and implement `sample(batch_size, length, generator)`."""

    name = "task"
    input_size = 0
    output_size = 0
    train_lengths = (1, 20)
    eval_lengths = (20,)
    # Per-task model and optimiser defaults; the trainer's own defaults fill the rest.
    defaults: dict = {}

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def sample_length(self, generator: torch.Generator, max_length: int | None = None) -> int:
        lo, hi = self.train_lengths
        hi = hi if max_length is None else max(lo, min(hi, max_length))
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean binary cross-entropy over the scored outputs."""
        per_element = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
        return per_element[batch.mask].mean()

    def errors(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Bit errors per sequence [B]: thresholded outputs that differ from the targets."""
        wrong = ((logits > 0).to(batch.targets.dtype) != batch.targets) & batch.mask.unsqueeze(-1)
        return wrong.sum(dim=(0, 2)).to(logits.dtype)
