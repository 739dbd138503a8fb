"""Repeat copy task (paper §4.2): see a sequence of random 8-bit vectors and a repeat count, then emit the
sequence that many times and an end marker.

Layout for a sequence of length L repeated n times (T = (n + 1)·L + 2 steps, input width 10, output
width 9):
    t = 0 .. L-1            input  [bits_t, 0, 0]     target scored: no
    t = L                   input  [0...0, 1, c]      delimiter, with the count c on its own channel
    t = L+1 .. L+nL         input  zeros              target [bits_{(t-L-1) mod L}, 0], scored
    t = L+1+nL              input  zeros              target [0...0, 1] (the end marker), scored
The count is normalised as in the paper to mean 0 and variance 1 over the training counts 1..10:
c = (n - 5.5) / sqrt(8.25); a count of 20 at test time is c = 5.05.
The length is drawn per batch by the trainer (1..10, as the paper) and the count per batch here (1..10)
unless `repeats` is given. A training curriculum (`--curriculum`) grows the largest count, from 1 (a copy
with an end marker) to 10. Generalisation: length up to 20 at 10 repeats, and up to 20 repeats at length
10 (the paper's Fig. 8).
"""
import math

import torch

from .base import PAPER_LSTM_NTM, Task, random_bits


class RepeatCopyTask(Task):
    name = "repeat-copy"
    train_lengths = (1, 10)
    max_repeats = 10  # training counts are 1..max_repeats
    eval_curves = {"length": ((5, 10, 15, 20), {"repeats": 10}),
                   "repeats": ((5, 10, 15, 20), {"length": 10})}
    solved_at = {"10 repeats=10": 0.1}  # the longest training sequence repeated the most training times
    defaults = {"model": PAPER_LSTM_NTM, "lr": {"rmsprop": 1e-4}}  # paper Table 2

    def __init__(self, width: int = 8):
        self.width = width
        self.input_size, self.output_size = width + 2, width + 1

    def normalised_count(self, repeats: int) -> float:
        """The count channel's value: zero mean and unit variance over the uniform training counts."""
        n = self.max_repeats
        return (repeats - (n + 1) / 2) / math.sqrt((n * n - 1) / 12)

    def curriculum_range(self):
        """A curriculum here grows the maximum repeat count: with one repeat the task is a copy."""
        return 1, self.max_repeats

    def training_batch(self, batch_size, generator, max_length=None, level=None):
        length = self.sample_length(generator, max_length)
        repeats = int(torch.randint(1, (level or self.max_repeats) + 1, (1,), generator=generator))
        return self.sample(batch_size, length, generator, repeats=repeats), length

    def curriculum_eval(self, length, level):
        return length, {"repeats": level}

    def sample(self, batch_size, length, generator, repeats=None):
        self.check_sample_args(batch_size, length)
        if repeats is None:
            repeats = int(torch.randint(1, self.max_repeats + 1, (1,), generator=generator))
        elif not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"{self.name}: argument 'repeats' must be an integer >= 1, got {repeats!r}")
        L, X, n = length, self.width, repeats
        bits = random_bits(L, batch_size, X, generator=generator)
        batch = self.empty_batch((n + 1) * L + 2, batch_size)
        batch.inputs[:L, :, :X] = bits
        batch.inputs[L, :, X] = 1.0
        batch.inputs[L, :, X + 1] = self.normalised_count(n)
        batch.targets[L + 1:L + 1 + n * L, :, :X] = bits.repeat(n, 1, 1)
        batch.targets[-1, :, X] = 1.0
        batch.mask[L + 1:] = True
        return batch
