"""Associative recall (paper §4.3): see a list of items, then one of them as a query, and answer with the
item that followed it in the list.

An item is 3 random 6-bit vectors. Layout for n items (T = 4n + 8 steps, input width 8, output width 6):
    t = 4i                  input  [0...0, 1, 0]       item delimiter before item i (i = 0 .. n-1)
    t = 4i+1 .. 4i+3        input  [item_i vectors, 0, 0]
    t = 4n                  input  [0...0, 0, 1]       query delimiter
    t = 4n+1 .. 4n+3        input  [item_q vectors, 0, 0]   the query, q uniform in 0 .. n-2 per sequence
    t = 4n+4                input  [0...0, 0, 1]       query delimiter
    t = 4n+5 .. 4n+7        input  zeros               target item_{q+1}, scored
Only the answer is scored. Items are drawn independently, so two items of one list coincide with
probability about n²/2 · 2⁻¹⁸ (4·10⁻⁴ at 15 items). Trained on 2..6 items (the paper's range); generalisation
up to 15 items (the paper's Fig. 11 goes to 20).
"""
import torch

from .base import PAPER_LSTM_NTM, Task, random_bits


class AssociativeRecallTask(Task):
    name = "associative-recall"
    train_lengths = (2, 6)
    eval_curves = {"length": ((2, 4, 6, 8, 10, 12, 15), {})}
    defaults = {"model": PAPER_LSTM_NTM, "lr": {"rmsprop": 1e-4}}  # paper Table 2

    def __init__(self, width: int = 6, item_vectors: int = 3):
        self.width, self.item_vectors = width, item_vectors
        self.input_size, self.output_size = width + 2, width

    def sample(self, batch_size, length, generator):
        self.check_sample_args(batch_size, length, min_length=2)
        n, V, X, B = length, self.item_vectors, self.width, batch_size
        step = V + 1  # an item and its delimiter
        items = random_bits(n, V, B, X, generator=generator)
        query = torch.randint(0, n - 1, (B,), generator=generator)
        batch = self.empty_batch(step * n + 2 * V + 2, B)
        body = batch.inputs[:step * n].view(n, step, B, X + 2)
        body[:, 0, :, X] = 1.0
        body[:, 1:, :, :X] = items
        columns = torch.arange(B)
        q_start = step * n
        batch.inputs[q_start, :, X + 1] = 1.0
        batch.inputs[q_start + 1:q_start + 1 + V, :, :X] = items[query, :, columns].transpose(0, 1)
        batch.inputs[q_start + 1 + V, :, X + 1] = 1.0
        batch.targets[-V:] = items[query + 1, :, columns].transpose(0, 1)
        batch.mask[-V:] = True
        return batch
