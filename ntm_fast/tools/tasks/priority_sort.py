"""Priority sort (paper §4.5): see random 8-bit vectors, each with a scalar priority drawn uniformly from
[-1, 1], then emit the 16 of highest priority, sorted by priority, highest first.

Layout for `length` input vectors (20 in the paper) of which `keep` (16) are emitted (T = length + 1 + keep
steps, input width 10, output width 8):
    t = 0 .. length-1                 input  [bits_t, priority_t, 0]     target scored: no
    t = length                        input  [0...0, 0, 1]               delimiter
    t = length+1 .. length+keep       input  zeros                       target: the vector of the
                                                                          (t-length)-th highest priority, scored
Direction: the paper's text says only "sorted according to their priorities" and "the 16 highest-priority
vectors"; its Fig. 17 reads memory "in increasing order" of write location, whose slope against priority it
does not state. We emit in descending priority, the order in which "highest priority" items are served.
Model defaults follow the paper's Table 2 (5 read and 5 write heads, lr 3e-5) except the controller, a
single 100-unit LSTM layer where the paper stacks two.
"""
import torch

from .base import PAPER_LSTM_NTM, Task, random_bits


class PrioritySortTask(Task):
    name = "priority-sort"
    train_lengths = (20, 20)
    eval_curves = {"length": ((20,), {})}
    defaults = {"model": dict(PAPER_LSTM_NTM, read_heads=5, write_heads=5), "lr": {"rmsprop": 3e-5}}

    def __init__(self, width: int = 8, keep: int = 16):
        self.width, self.keep = width, keep
        self.input_size, self.output_size = width + 2, width

    def sample(self, batch_size, length, generator):
        self.check_sample_args(batch_size, length, min_length=self.keep)
        L, K, X, B = length, self.keep, self.width, batch_size
        bits = random_bits(L, B, X, generator=generator)
        priority = torch.rand(L, B, generator=generator) * 2 - 1
        batch = self.empty_batch(L + 1 + K, B)
        batch.inputs[:L, :, :X] = bits
        batch.inputs[:L, :, X] = priority
        batch.inputs[L, :, X + 1] = 1.0
        order = priority.argsort(dim=0, descending=True)[:K]  # [K, B] input positions, highest priority first
        batch.targets[L + 1:] = bits.gather(0, order[..., None].expand(K, B, X))
        batch.mask[L + 1:] = True
        return batch
