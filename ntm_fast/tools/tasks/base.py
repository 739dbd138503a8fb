"""What every task provides: batched, seeded sequence generation, the loss, the error metric and the points
at which a trained model's generalisation is measured."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

# The paper's NTM with an LSTM controller (Table 2): one read and one write head, 100 controller units,
# 128 x 20 memory. Tasks that differ say so in their `defaults`.
PAPER_LSTM_NTM = dict(controller="lstm", controller_size=100, memory_slots=128, memory_width=20, read_heads=1,
                      write_heads=1)


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
    `eval_curves` and implement `sample(batch_size, length, generator)`.

    `length` is the task's size knob: vectors to copy, items to recall, bits to predict, vectors to sort.
    `eval_curves` maps a swept argument of `sample` to (values, the other arguments held fixed); the
    generalisation evaluation runs every point of every curve (`eval_points`).
    """

    name = "task"
    input_size = 0
    output_size = 0
    train_lengths = (1, 20)
    eval_curves: dict = {"length": ((20,), {})}
    metric = "bit errors per sequence"  # what `errors` counts, for logs and plots
    # When a model counts as solved: {label of one of `eval_points`: most errors per sequence allowed}. The
    # trainer judges its best model at these points (all of them, on sequences of its own), and
    # `stop_when_solved` ends a run once every one is met. Empty: the best model is the one with the fewest
    # errors at the periodic evaluation's point, and no run counts as solved.
    solved_at: dict = {}
    # Per-task defaults: 'model' -> NTM keyword arguments, 'lr' -> {optimizer: rate}, 'train' -> TrainConfig
    # fields that `ntm-fast train` starts from for this task (under a --config entry and the flags given).
    # The trainer's own defaults fill the rest.
    defaults: dict = {}

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def sample_length(self, generator: torch.Generator, max_length: int | None = None) -> int:
        lo, hi = self.train_lengths
        hi = hi if max_length is None else max(lo, min(hi, max_length))
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))

    def curriculum_range(self) -> tuple[int, int]:
        """The levels of a training curriculum: here the maximum length (the trainer's `curriculum`)."""
        return self.train_lengths

    def training_batch(self, batch_size: int, generator: torch.Generator, max_length: int | None = None,
                       level: int | None = None) -> tuple[Batch, int]:
        """(batch, length) from the training distribution: the length drawn up to `max_length` (None: the
        task's longest) and, under a curriculum, up to its `level`."""
        cap = max_length if level is None else min(level, max_length or level)
        length = self.sample_length(generator, cap)
        return self.sample(batch_size, length, generator), length

    def curriculum_eval(self, length: int, level: int) -> tuple[int, dict]:
        """(length, other `sample` arguments) at which a curriculum's `level` is judged, `length` being the
        longest training length."""
        return min(level, length), {}

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean binary cross-entropy over the scored outputs."""
        per_element = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")
        return per_element[batch.mask].mean()

    def errors(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Bit errors per sequence [B]: thresholded outputs that differ from the targets."""
        wrong = ((logits > 0).to(batch.targets.dtype) != batch.targets) & batch.mask.unsqueeze(-1)
        return wrong.sum(dim=(0, 2)).to(logits.dtype)

    def optimal_errors(self, batch: Batch) -> torch.Tensor | None:
        """The `errors` [B] of the best possible predictor, for tasks that have one in closed form."""
        return None

    @staticmethod
    def point_label(length: int, **kwargs) -> str:
        """The name of an evaluation point: the length, then the other `sample` arguments ('10 repeats=20')."""
        return " ".join([str(length)] + [f"{k}={v}" for k, v in sorted(kwargs.items())])

    def eval_points(self, curves: dict | None = None) -> list[tuple[str, int, dict]]:
        """(label, length, other `sample` arguments) of every point of `curves` (default: `eval_curves`),
        each once."""
        points = {}
        for swept, (values, fixed) in (curves or self.eval_curves).items():
            for value in values:
                kwargs = {**fixed, swept: value}
                length = kwargs.pop("length")
                label = self.point_label(length, **kwargs)
                points[label] = (label, length, kwargs)
        return list(points.values())

    # --- helpers for the generators ---------------------------------------------------------------------
    def check_sample_args(self, batch_size: int, length: int, min_length: int = 1):
        for name, value, minimum in (("batch_size", batch_size, 1), ("length", length, min_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{self.name}: argument '{name}' must be an integer >= {minimum}, got {value!r}")

    def empty_batch(self, steps: int, batch_size: int) -> Batch:
        """All-zero inputs and targets, nothing scored: generators fill in their layout."""
        return Batch(torch.zeros(steps, batch_size, self.input_size), torch.zeros(steps, batch_size, self.output_size),
                     torch.zeros(steps, batch_size, dtype=torch.bool))


def random_bits(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Independent fair random bits (0.0 / 1.0) of `shape`."""
    return torch.randint(0, 2, shape, generator=generator).float()
