"""The paper's five tasks: each generator's layout and target on small hand-checked cases, the n-gram
Bayesian estimator on a hand-computed sequence, seeded reproducibility, a short training run per task that
lowers the loss, the generalisation points, and the model zoo."""
import math

import pytest
import torch

from ntm_fast.model import NTM
from ntm_fast.tools.tasks import (TASKS, AssociativeRecallTask, Batch, CopyTask, NGramTask, PrioritySortTask,
                            RepeatCopyTask, make_task)
from ntm_fast.tools.train import TrainConfig
from ntm_fast.tools.zoo import ZOO, zoo_config


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def test_copy_layout():
    b = CopyTask(width=3).sample(2, 4, rng())
    assert b.inputs.shape == (9, 2, 4) and b.targets.shape == (9, 2, 3)
    assert torch.equal(b.targets[5:], b.inputs[:4, :, :3])
    assert b.inputs[4, :, 3].eq(1).all() and b.inputs[:4, :, 3].eq(0).all() and b.inputs[5:].eq(0).all()
    assert b.mask[:, 0].tolist() == [False] * 5 + [True] * 4


def test_copy_training_sequences_hold_zero_vectors_and_evaluation_sequences_do_not():
    task = CopyTask()
    batch, length = task.training_batch(4000, rng(), max_length=5)
    L = length
    vectors = batch.inputs[:L, :, :8]
    zero = vectors.eq(0).all(-1)  # [L, B]
    # 0.1 of the vectors set to zero, besides the 1/256 of fair bits that are zero anyway.
    assert abs(zero.float().mean().item() - (0.1 + 0.9 / 256)) < 0.01
    assert torch.equal(batch.targets[L + 1:], vectors) and batch.inputs[L, :, 8].eq(1).all()
    held_out = task.sample(4000, 5, rng()).inputs[:5, :, :8].eq(0).all(-1).float().mean().item()
    assert held_out < 0.01


def test_repeat_copy_repeats_the_sequence_then_emits_the_end_marker():
    b = RepeatCopyTask(width=2).sample(3, 2, rng(), repeats=3)
    L, n, X = 2, 3, 2
    assert b.inputs.shape == ((n + 1) * L + 2, 3, X + 2) and b.targets.shape == ((n + 1) * L + 2, 3, X + 1)
    seq = b.inputs[:L, :, :X]
    assert b.inputs[L, :, X].eq(1).all()  # delimiter
    assert b.inputs[L, :, X + 1] == pytest.approx((3 - 5.5) / math.sqrt(8.25))  # the normalised count
    assert b.inputs[:L, :, X:].eq(0).all() and b.inputs[L + 1:].eq(0).all()
    assert torch.equal(b.targets[L + 1:L + 1 + n * L, :, :X], torch.cat([seq] * n))
    assert b.targets[:-1, :, X].eq(0).all() and b.targets[-1, :, X].eq(1).all() and b.targets[-1, :, :X].eq(0).all()
    assert b.mask[:, 0].tolist() == [False] * (L + 1) + [True] * (n * L + 1)


def test_repeat_copy_curriculum_caps_the_repeat_count():
    task = RepeatCopyTask()
    data = rng()
    for _ in range(20):
        batch, length = task.training_batch(2, data, level=2)
        repeats = (batch.inputs.shape[0] - 2) // length - 1
        assert 1 <= length <= 10 and repeats in (1, 2)
    assert task.curriculum_range() == (1, 10) and task.curriculum_eval(10, 3) == (10, {"repeats": 3})


def test_repeat_copy_count_normalisation_has_zero_mean_unit_variance_over_training_counts():
    counts = torch.tensor([RepeatCopyTask().normalised_count(n) for n in range(1, 11)])
    assert counts.mean().item() == pytest.approx(0, abs=1e-6)
    assert counts.var(unbiased=False).item() == pytest.approx(1)


def test_associative_recall_target_is_the_item_after_the_query():
    task = AssociativeRecallTask()
    n, B = 4, 64
    b = task.sample(B, n, rng())
    assert b.inputs.shape == (4 * n + 8, B, 8) and b.targets.shape == (4 * n + 8, B, 6)
    queries = set()
    for s in range(B):
        x = b.inputs[:, s]
        assert x[0:4 * n:4, 6].eq(1).all() and x[:, 6].sum() == n  # one item delimiter before each item
        assert x[4 * n, 7] == 1 and x[4 * n + 4, 7] == 1 and x[:, 7].sum() == 2  # query delimiters
        items = [x[4 * i + 1:4 * i + 4, :6] for i in range(n)]
        query = x[4 * n + 1:4 * n + 4, :6]
        q = next(i for i, item in enumerate(items) if torch.equal(item, query))
        queries.add(q)
        assert q < n - 1
        assert torch.equal(b.targets[-3:, s], items[q + 1])
    assert queries == set(range(n - 1))  # every item but the last gets asked for
    assert b.mask[:, 0].tolist() == [False] * (4 * n + 5) + [True] * 3


def test_priority_sort_target_is_the_highest_priorities_in_descending_order():
    task = PrioritySortTask(width=3, keep=4)
    b = task.sample(5, 6, rng())
    assert b.inputs.shape == (11, 5, 5) and b.targets.shape == (11, 5, 3)
    for s in range(5):
        pairs = [(b.inputs[t, s, 3].item(), b.inputs[t, s, :3].tolist()) for t in range(6)]
        assert all(-1 <= p <= 1 for p, _ in pairs)
        expected = [bits for _, bits in sorted(pairs, key=lambda pair: pair[0], reverse=True)[:4]]
        assert b.targets[7:, s].tolist() == expected
    assert b.inputs[6, :, 4].eq(1).all() and b.inputs[7:].eq(0).all()
    assert b.mask[:, 0].tolist() == [False] * 7 + [True] * 4


def test_ngram_layout_predicts_the_next_bit_of_the_drawn_bits():
    b = NGramTask().sample(3, 10, rng())
    assert b.inputs.shape == b.targets.shape == (14, 3, 1)
    assert torch.equal(b.inputs[1:], b.targets[:-1])  # target at t is the input at t + 1
    assert b.mask[:, 0].tolist() == [False] * 4 + [True] * 10  # the 10 bits drawn from the table
    assert set(b.inputs.unique().tolist()) <= {0.0, 1.0}


def test_ngram_tables_follow_beta_half_half():
    p = NGramTask().tables(4000, rng()).flatten()
    assert p.shape == (4000 * 32,) and ((p >= 0) & (p <= 1)).all()
    # Beta(½, ½): mean ½, variance ⅛, and P(p < 0.1) = (2/π)·asin(√0.1) ≈ 0.205 (mass piles up at 0 and 1).
    assert p.mean().item() == pytest.approx(0.5, abs=0.005) and p.var().item() == pytest.approx(1 / 8, abs=0.002)
    assert (p < 0.1).float().mean().item() == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.1)), abs=0.005)


def test_ngram_bayesian_estimator_on_a_hand_computed_sequence():
    # Context 00000 is seen three times: P(1) = ½, then ¼ (after one 0), then 1/6 (after two 0s); the last
    # bit has the new context 00001: P(1) = ½. Bits 0, 0, 1, 1 cost 1 + log2(4/3) + log2(6) + 1 = 5 bits.
    bits = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.float32)[:, None, None]
    mask = torch.tensor([False] * 4 + [True] * 4)[:, None]
    batch = Batch(bits[:-1], bits[1:], mask)
    task = NGramTask()
    assert task.optimal_errors(batch).tolist() == pytest.approx([5.0])
    assert task.errors(torch.zeros(8, 1, 1), batch).tolist() == pytest.approx([4.0])  # p = ½: 1 bit each


def test_ngram_optimal_cost_beats_a_fair_coin():
    task = NGramTask()
    batch = task.sample(16, 200, rng())
    optimal = task.optimal_errors(batch).mean().item()
    assert 100 < optimal < 160  # 200 bits from Beta(½, ½) tables are far from fair coins


@pytest.mark.parametrize("name", sorted(TASKS))
def test_seeds_reproduce_batches(name):
    task = make_task(name)
    length = task.train_lengths[1]
    a, b, c = (task.sample(4, length, rng(seed)) for seed in (5, 5, 6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape[-1] == task.input_size and a.targets.shape[-1] == task.output_size
    assert a.mask.any()


@pytest.mark.parametrize("task,length,bad", [
    (AssociativeRecallTask(), 1, "associative-recall: argument 'length' must be an integer >= 2, got 1"),
    (PrioritySortTask(), 10, "priority-sort: argument 'length' must be an integer >= 16, got 10"),
    (CopyTask(), 0, "copy: argument 'length' must be an integer >= 1, got 0"),
])
def test_bad_lengths_name_the_argument(task, length, bad):
    with pytest.raises(ValueError, match=bad):
        task.sample(2, length, rng())


def test_bad_repeat_count_names_the_argument():
    with pytest.raises(ValueError, match="argument 'repeats' must be an integer >= 1, got 0"):
        RepeatCopyTask().sample(2, 3, rng(), repeats=0)


# Each task at a small size for a quick training run: (task, length, sample arguments).
SMALL = {
    "copy": (CopyTask(), 3, {}),
    "repeat-copy": (RepeatCopyTask(), 2, {"repeats": 2}),
    "associative-recall": (AssociativeRecallTask(), 2, {}),
    "ngram": (NGramTask(), 30, {}),
    "priority-sort": (PrioritySortTask(keep=3), 5, {}),
}


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the machine's other cores stay free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_short_training_lowers_the_loss(name, one_thread):
    task, length, kwargs = SMALL[name]
    torch.manual_seed(0)
    model = NTM(task.input_size, task.output_size, controller_size=16, memory_slots=8, memory_width=6,
                backend="reference")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    held_out = task.sample(32, length, rng(99), **kwargs)

    def held_out_loss():
        with torch.no_grad():
            return task.loss(model(held_out.inputs), held_out).item()

    before = held_out_loss()
    data = rng(0)
    for _ in range(60):
        batch = task.sample(8, length, data, **kwargs)
        loss = task.loss(model(batch.inputs), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < before, (before, after)
    if name == "ngram":
        assert after < math.log(2), after  # better than a fair coin: it uses the bits seen so far


def test_eval_points_are_labelled_and_shared_points_run_once():
    points = RepeatCopyTask().eval_points()
    labels = [label for label, _, _ in points]
    assert len(labels) == len(set(labels))
    assert ("10 repeats=20", 10, {"repeats": 20}) in points and ("20 repeats=10", 20, {"repeats": 10}) in points
    assert [label for label, _, _ in CopyTask().eval_points()] == ["20", "40", "80", "120"]
    assert max(length for _, length, _ in AssociativeRecallTask().eval_points()) >= 12


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_entries_are_valid_configs(name):
    config = TrainConfig(**zoo_config(name))
    config.validate()
    assert ZOO[name]["about"]
    assert config.task in TASKS


def test_unknown_zoo_entry_names_the_zoo():
    with pytest.raises(ValueError, match="unknown config 'nope'; the zoo has: copy"):
        zoo_config("nope")
