"""Copy task (paper §4.1): see a sequence of random 8-bit vectors, then a delimiter, then repeat it.

Layout for a sequence of length L (T = 2L + 1 steps, input width 9, output width 8):
    t = 0 .. L-1      input  [bits_t, 0]       target scored: no
    t = L             input  [0...0, 1]        (delimiter channel) target scored: no
    t = L+1 .. 2L     input  zeros             target bits_{t-L-1}, scored
The loss and bit errors count the recall phase only. Trained on L = 1..20; generalisation at 20, 40, 80
and 120 (the paper's Fig. 4 goes to 120).
"""
from .base import PAPER_LSTM_NTM, Task, random_bits


class CopyTask(Task):
    name = "copy"
    train_lengths = (1, 20)
    eval_curves = {"length": ((20, 40, 80, 120), {})}
    solved_at = {"20": 0.1, "120": 1.0}  # learnt at the training length, and generalising 6x beyond it (Fig. 4)
    defaults = {"model": PAPER_LSTM_NTM, "lr": {"rmsprop": 1e-4}}  # paper Table 2

    def __init__(self, width: int = 8):
        self.width = width
        self.input_size, self.output_size = width + 1, width

    def sample(self, batch_size, length, generator):
        self.check_sample_args(batch_size, length)
        L, X = length, self.width
        bits = random_bits(L, batch_size, X, generator=generator)
        batch = self.empty_batch(2 * L + 1, batch_size)
        batch.inputs[:L, :, :X] = bits
        batch.inputs[L, :, X] = 1.0
        batch.targets[L + 1:] = bits
        batch.mask[L + 1:] = True
        return batch
