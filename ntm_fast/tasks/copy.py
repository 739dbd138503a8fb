"""Copy task (paper §4.1): see a sequence of random 8-bit vectors, then a delimiter, then repeat it.

Layout for a sequence of length L (T = 2L + 1 steps, input width 9, output width 8):
    t = 0 .. L-1      input  [bits_t, 0]       target scored: no
    t = L             input  [0...0, 1]        (delimiter channel) target scored: no
    t = L+1 .. 2L     input  zeros             target bits_{t-L-1}, scored
The loss and bit errors count the recall phase only.
"""
import torch

from .base import Batch, Task


class CopyTask(Task):
    name = "copy"
    input_size = 9
    output_size = 8
    train_lengths = (1, 20)
    eval_lengths = (20, 40, 80, 120)

    def __init__(self, width: int = 8):
        self.width = width
        self.input_size, self.output_size = width + 1, width

    def sample(self, batch_size, length, generator):
        L, B, X = length, batch_size, self.width
        bits = torch.randint(0, 2, (L, B, X), generator=generator).float()
        inputs = torch.zeros(2 * L + 1, B, X + 1)
        inputs[:L, :, :X] = bits
        inputs[L, :, X] = 1.0
        targets = torch.zeros(2 * L + 1, B, X)
        targets[L + 1:] = bits
        mask = torch.zeros(2 * L + 1, B, dtype=torch.bool)
        mask[L + 1:] = True
        return Batch(inputs, targets, mask)
