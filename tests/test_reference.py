"""The reference path against hand-computed cases (the seed's five exercises), float64 gradcheck, and no
NaN/Inf on adversarial inputs."""
import math

import pytest
import torch

import cases
from ntm_fast import NTMCell, ops
from ntm_fast.ops import reference

f64 = dict(dtype=torch.float64)


def t(x):
    return torch.tensor(x, **f64)


# Exercise 1: content addressing (Eq 5-6) -------------------------------------------------------------
def test_content_addressing_by_hand():
    memory = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # [B=1, N=3, M=2]
    key = t([[[1.0, 0.0]]])  # [1, 1, 2]
    # cosine similarities 1, 0, 1/sqrt(2); softmax with beta = 1:
    e = [math.e, 1.0, math.exp(1 / math.sqrt(2))]
    expected = [x / sum(e) for x in e]  # 0.47304, 0.17402, 0.35293
    w = reference.content_weights(memory, key, t([[1.0]]))
    torch.testing.assert_close(w[0, 0], t(expected), atol=1e-7, rtol=0)
    assert abs(expected[0] - 0.47304) < 1e-5
    # beta = 0 ignores content: uniform.
    torch.testing.assert_close(reference.content_weights(memory, key, t([[0.0]]))[0, 0], t([1 / 3] * 3))


def test_zero_key_and_zero_rows_give_zero_similarity():
    memory = t([[[0.0, 0.0], [3.0, 4.0]]])
    sim = reference.cosine_similarity(memory, t([[[0.0, 0.0], [3.0, 4.0]]]))
    assert sim[0, 0].abs().max() == 0  # zero key: similarity 0 everywhere
    assert sim[0, 1, 0] == 0  # zero row: similarity 0
    assert abs(sim[0, 1, 1].item() - 1.0) < 1e-8


# Exercise 2: circular shift (Eq 8) with its direction and wrap-around ------------------------------------
@pytest.mark.parametrize("start,shift,expected_slot", [(2, +1, 3), (4, +1, 0), (0, -1, 4), (3, 0, 3)])
def test_shift_moves_focus_in_the_papers_direction(start, shift, expected_slot):
    N, S = 5, 1
    w = torch.zeros(1, 1, N, **f64)
    w[0, 0, start] = 1.0
    s = torch.zeros(1, 1, 2 * S + 1, **f64)
    s[0, 0, shift + S] = 1.0  # shift[..., j+S] is the weight of shift j
    out = reference.circular_shift(w, s)
    assert out[0, 0].argmax().item() == expected_slot
    assert out[0, 0, expected_slot].item() == 1.0


def test_shift_spreads_focus_by_hand():
    w = t([[[1.0, 0.0, 0.0, 0.0, 0.0]]])
    out = reference.circular_shift(w, t([[[0.1, 0.8, 0.1]]]))  # shifts -1, 0, +1
    torch.testing.assert_close(out[0, 0], t([0.8, 0.1, 0.0, 0.0, 0.1]))


def test_shift_wider_than_memory_wraps():
    # N = 3, S = 2: shifts -2..2; shift +2 from slot 2 lands on slot 1, shift -2 from slot 0 on slot 1.
    w = t([[[0.0, 0.0, 1.0]]])
    torch.testing.assert_close(reference.circular_shift(w, t([[[0, 0, 0, 0, 1.0]]]))[0, 0], t([0.0, 1.0, 0.0]))
    w = t([[[1.0, 0.0, 0.0]]])
    torch.testing.assert_close(reference.circular_shift(w, t([[[1.0, 0, 0, 0, 0]]]))[0, 0], t([0.0, 1.0, 0.0]))


# Exercise 3: erase and add with two write heads (Eq 3-4) -------------------------------------------------
def test_erase_then_add_two_heads_by_hand():
    memory = t([[[1.0, 2.0], [3.0, 4.0]]])
    w = t([[[1.0, 0.0], [0.5, 0.5]]])  # head 1 on slot 0; head 2 spread over both
    erase = t([[[1.0, 0.0], [0.0, 1.0]]])
    add = t([[[0.0, 0.0], [1.0, 1.0]]])
    # keep = (1 - w1 e1)(1 - w2 e2) = [[0, .5], [1, .5]]; M*keep = [[0, 1], [3, 2]]; + 0.5 everywhere.
    out = reference.write(memory, w, erase, add)
    torch.testing.assert_close(out, t([[[0.5, 1.5], [3.5, 2.5]]]))


def test_all_erases_happen_before_all_adds():
    # Head 1 adds 1 to slot 0, head 2 fully erases slot 0: the add survives (erases first, then adds).
    memory = t([[[5.0]]])
    out = reference.write(memory, t([[[1.0], [1.0]]]), t([[[0.0], [1.0]]]), t([[[1.0], [0.0]]]))
    assert out.item() == 1.0


# Exercise 4: controller input is [x_t; r_{t-1}] ---------------------------------------------------------
def test_controller_input_concatenates_input_and_previous_reads():
    torch.manual_seed(0)
    cell = NTMCell(4, 3, controller_size=8, memory_slots=5, memory_width=3, read_heads=2, backend="reference")
    state = cell.initial_state(2)
    reads = torch.arange(12, dtype=torch.float32).view(2, 6)
    state = state._replace(reads=reads)
    x = torch.randn(2, 4)
    seen = {}
    cell.controller.register_forward_pre_hook(lambda mod, args: seen.setdefault("input", args[0]))
    cell(x, state)
    assert seen["input"].shape == (2, 4 + 2 * 3)
    torch.testing.assert_close(seen["input"], torch.cat([x, reads], dim=1))


# Exercise 5: sharpening (Eq 9) ----------------------------------------------------------------------------
def test_sharpening_by_hand():
    w = reference.sharpen(t([[[0.5, 0.25, 0.25]]]), t([[2.0]]))
    torch.testing.assert_close(w[0, 0], t([2 / 3, 1 / 6, 1 / 6]))
    w = reference.sharpen(t([[[0.6, 0.4, 0.0]]]), t([[1.0]]))  # gamma = 1 is the identity
    torch.testing.assert_close(w[0, 0], t([0.6, 0.4, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sharpening_exact_zeros_and_large_gamma_stay_finite(dtype):
    w_s = torch.tensor([[[0.6, 0.4, 0.0], [1.0, 0.0, 0.0]]], dtype=dtype, requires_grad=True)
    gamma = torch.tensor([[50.0, 50.0]], dtype=dtype, requires_grad=True)
    w = reference.sharpen(w_s, gamma)
    assert w[0, 0, 2] == 0 and w[0, 1, 0] == 1
    (w * torch.arange(3, dtype=dtype)).sum().backward()
    assert torch.isfinite(w_s.grad).all() and torch.isfinite(gamma.grad).all()


# gradcheck and adversarial inputs ---------------------------------------------------------------------------
GRADCHECK = {
    "address": lambda: cases.address_inputs(2, 7, 3, 2, 1),
    "read": lambda: cases.read_inputs(2, 7, 3, 2),
    "write": lambda: cases.write_inputs(2, 7, 3, 3),
    "memory_step": lambda: cases.memory_step_inputs(2, 7, 3, 2, 2, 2),
}


@pytest.mark.parametrize("op", list(GRADCHECK))
def test_gradcheck_float64(op):
    inputs = GRADCHECK[op]()
    leaves = [x.clone().requires_grad_(True) for x in cases.flat_tensors(inputs)]
    fn = lambda *xs: getattr(ops, op)(**cases.rebuild(inputs, xs), backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", cases.KINDS)
def test_no_nan_or_inf_forward_and_backward(kind, dtype):
    inputs = cases.memory_step_inputs(3, 16, 5, 2, 2, 1, kind, dtype=dtype)
    leaves = [x.clone().requires_grad_(True) for x in cases.flat_tensors(inputs)]
    outs = ops.memory_step(**cases.rebuild(inputs, leaves), backend="reference")
    sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
    for o in outs:
        assert torch.isfinite(o).all()
    for x in leaves:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_zero_memory_zero_key_huge_beta_gamma(dtype):
    B, N, M, H = 2, 9, 4, 2
    memory = torch.zeros(B, N, M, dtype=dtype, requires_grad=True)
    key = torch.zeros(B, H, M, dtype=dtype, requires_grad=True)
    beta = torch.full((B, H), 1e3, dtype=dtype, requires_grad=True)
    gamma = torch.full((B, H), 50.0, dtype=dtype, requires_grad=True)
    gate = torch.ones(B, H, dtype=dtype, requires_grad=True)
    shift = torch.tensor([0.0, 1.0, 0.0], dtype=dtype).expand(B, H, 3).clone().requires_grad_(True)
    w_prev = torch.full((B, H, N), 1.0 / N, dtype=dtype, requires_grad=True)
    w = ops.address(memory, key, beta, gate, shift, gamma, w_prev, backend="reference")
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / N))  # nothing to choose between: uniform
    (w * torch.arange(N, dtype=dtype)).sum().backward()
    for x in (memory, key, beta, gamma, gate, shift, w_prev):
        assert torch.isfinite(x.grad).all()


def test_weightings_are_distributions():
    inputs = cases.address_inputs(4, 33, 20, 3, 2, "random")
    w = ops.address(**inputs, backend="reference")
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 3, **f64))
    assert (w >= 0).all()
