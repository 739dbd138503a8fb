"""The NTM module: shapes, controllers, memory inits, learned initial state, traces, dtypes."""
import math

import pytest
import torch

from ntm_fast import NTM

SMALL = dict(controller_size=12, memory_slots=10, memory_width=5)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
@pytest.mark.parametrize("memory_init", ["constant", "learned", "random"])
def test_forward_shapes_and_gradients(controller, memory_init):
    torch.manual_seed(0)
    model = NTM(6, 4, controller=controller, memory_init=memory_init, read_heads=2, write_heads=3,
                shift_range=2, backend="reference", **SMALL)
    x = torch.randn(7, 3, 6)
    logits, trace = model(x, return_trace=True)
    assert logits.shape == (7, 3, 4)
    assert trace["read_weights"].shape == (7, 3, 2, 10)
    assert trace["write_weights"].shape == (7, 3, 3, 10)
    torch.testing.assert_close(trace["read_weights"].sum(-1), torch.ones(7, 3, 2))
    logits.sum().backward()
    # The learned initial state receives gradient: controller state, read vectors, weightings.
    for name in ("read0", "w_logits0") + (("h0", "c0") if controller == "lstm" else ()):
        assert getattr(model.cell, name).grad is not None and getattr(model.cell, name).grad.abs().sum() > 0, name
    if memory_init == "learned":
        assert model.cell.memory0.grad.abs().sum() > 0


def test_random_memory_init_differs_per_call_and_constant_is_1e6():
    model = NTM(3, 2, memory_init="random", **SMALL)
    assert not torch.equal(model.cell.initial_state(2).memory, model.cell.initial_state(2).memory)
    const = NTM(3, 2, **SMALL).cell.initial_state(2).memory
    assert torch.all(const == 1e-6)


def test_float64_model_runs():
    model = NTM(3, 2, backend="reference", **SMALL).double()
    out = model(torch.randn(4, 2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_config_round_trip():
    model = NTM(9, 8, controller="feedforward", read_heads=2, **SMALL)
    clone = NTM(**model.config())
    assert clone.config() == model.config()
    clone.load_state_dict(model.state_dict())


def test_reads_happen_before_the_write():
    # Step 1 reads against M_0: with constant memory every read vector is 1e-6 in every element,
    # whatever the step writes.
    model = NTM(3, 2, backend="reference", **SMALL)
    state = model.cell.initial_state(2)
    _, new_state = model.cell(torch.randn(2, 3), state)
    torch.testing.assert_close(new_state.reads, torch.full_like(new_state.reads, 1e-6))
    assert not torch.allclose(new_state.memory, state.memory)


@pytest.mark.parametrize("shift_range", [1, 2])
def test_heads_start_out_mostly_staying_in_place(shift_range):
    # Shift 0 starts with logit bias +2 over the others in every head: e^2 / (e^2 + 2S) of the mass on average.
    model = NTM(9, 8, read_heads=2, write_heads=1, shift_range=shift_range)
    read, write = model.cell.layout.activate(model.cell.heads.bias.detach().unsqueeze(0))
    shifts = torch.cat([read.shift, write.shift], dim=1)[0]  # [H, 2S+1]
    stay = math.exp(2) / (math.exp(2) + 2 * shift_range)
    assert shifts.argmax(-1).eq(shift_range).all()
    assert torch.allclose(shifts[:, shift_range], torch.full((3,), stay), atol=0.06)
