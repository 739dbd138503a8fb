"""Dynamic N-grams (paper §4.4): predict the next bit of a sequence drawn from a random 6-gram model.

Each sequence has its own lookup table: for each of the 32 possible 5-bit contexts, the probability that
the next bit is 1, drawn from Beta(½, ½). The first 5 bits are fair coin flips (the first context); then
`length` bits (200, as in the paper) are drawn from the table. Layout (T = length + 4 steps, input and
output width 1):
    t = 0 .. length+3      input  bit_t        target bit_{t+1}, scored from t = 4 on (the drawn bits)
Loss: mean binary cross-entropy. Metric (`errors`): the cost in bits per sequence, Σ −log₂ p(bit) over the
`length` drawn bits. `optimal_errors` gives the same cost for the optimal Bayesian estimator of the paper:
with N0, N1 the zeros and ones seen so far after the current context, P(1) = (N1 + ½) / (N0 + N1 + 1).
"""
import math

import torch
from torch.nn import functional as F

from .base import PAPER_LSTM_NTM, Batch, Task, random_bits


class NGramTask(Task):
    name = "ngram"
    input_size = output_size = 1
    train_lengths = (200, 200)
    eval_curves = {"length": ((200,), {})}
    metric = "cost in bits per sequence"
    defaults = {"model": PAPER_LSTM_NTM, "lr": {"rmsprop": 3e-5}}  # paper Table 2

    def __init__(self, context: int = 5):
        self.context = context

    def tables(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A lookup table per sequence [B, 2^context]: P(next bit = 1 | context), each drawn from Beta(½, ½),
        the arcsine law, as sin²(πU/2) for U uniform (torch's Beta sampler takes no generator)."""
        return torch.sin(torch.rand(batch_size, 2 ** self.context, generator=generator) * (math.pi / 2)) ** 2

    def sample(self, batch_size, length, generator):
        self.check_sample_args(batch_size, length)
        C, B = self.context, batch_size
        table = self.tables(B, generator)
        uniform = torch.rand(length, B, generator=generator)
        bits = torch.cat([random_bits(C, B, generator=generator), torch.zeros(length, B)])
        weights = 2 ** torch.arange(C - 1, -1, -1)  # oldest context bit is the most significant
        rows = torch.arange(B)
        for t in range(C, C + length):
            ctx = (bits[t - C:t].long() * weights[:, None]).sum(0)
            bits[t] = (uniform[t - C] < table[rows, ctx]).float()
        batch = Batch(bits[:-1, :, None], bits[1:, :, None], torch.zeros(C + length - 1, B, dtype=torch.bool))
        batch.mask[C - 1:] = True
        return batch

    def errors(self, logits, batch):
        """Cost in bits per sequence [B] of the predicted probabilities on the scored bits."""
        nats = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none")[..., 0]
        return (nats * batch.mask).sum(0) / math.log(2)

    def optimal_errors(self, batch):
        """Cost in bits per sequence [B] of the optimal Bayesian estimator of the paper."""
        C = self.context
        bits = torch.cat([batch.inputs[:, :, 0], batch.targets[-1:, :, 0]]).long()  # the whole sequence [T+1, B]
        B = bits.shape[1]
        counts = torch.zeros(B, 2 ** C, 2)  # [sequence, context, N0 / N1]
        weights = 2 ** torch.arange(C - 1, -1, -1)
        rows = torch.arange(B)
        cost = torch.zeros(B)
        for t in range(C, bits.shape[0]):
            ctx = (bits[t - C:t] * weights[:, None]).sum(0)
            n0, n1 = counts[rows, ctx].unbind(-1)
            p1 = (n1 + 0.5) / (n0 + n1 + 1)
            cost -= torch.log2(torch.where(bits[t] == 1, p1, 1 - p1))
            counts[rows, ctx, bits[t]] += 1
        return cost
