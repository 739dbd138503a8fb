"""The fused NTM step and sequence (ntm_fast/model/fused.py with csrc/ntm_cell.cpp) with the cpp backend on CPU:
one autograd node per time step (FusedStep, NTMCell.forward) or per sequence (FusedSequence, NTM.forward). Their
forwards and every gradient against the unfused cell and the reference (float64 tight, float32 as the
reference's own error allows), for both controllers and odd sizes; the sequence's batch chunks (one per
thread) at batch sizes that do not divide evenly; torch.autograd gradcheck through the hand-written
backwards; when they are (not) used; a few training steps equal the reference's."""
import pytest
import torch

import cases
from ntm_fast.model import NTM, NTMCell
from ntm_fast.model import fused as fused_module
from ntm_fast.ops import extension
from ntm_fast.ops.autograd import FusedSequence, FusedStep


@pytest.fixture(scope="module", autouse=True)
def cpp():
    cases.backend_or_skip("cpp", "cpu")


def _model(controller, dtype, backend, **sizes):
    torch.manual_seed(0)
    kw = dict(controller_size=13, memory_slots=11, memory_width=5, read_heads=2, write_heads=3, shift_range=1)
    kw.update(sizes)
    model = NTM(7, 6, controller=controller, backend=backend, **kw).to(dtype)
    with torch.no_grad():  # away from the initial values, so that no gradient is trivially zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _per_step(model, x):
    """NTM.forward one NTMCell call per step (the fused FusedStep when usable), instead of one FusedSequence."""
    state, logits = model.cell.initial_state(x.shape[1]), []
    for x_t in x:
        y_t, state = model.cell(x_t, state)
        logits.append(y_t)
    return torch.stack(logits)


def _run(model, x, fused, per_step=False):
    """Logits and every parameter's and the input's gradient for a fixed cotangent. fused: through FusedSequence
    (or FusedStep with per_step); not fused: the unfused cell of the model's backend."""
    x = x.clone().requires_grad_(True)
    real = fused_module.usable, fused_module.sequence_usable
    try:
        if not fused:
            fused_module.usable = fused_module.sequence_usable = lambda cell, x: False
        logits = _per_step(model, x) if per_step else model(x)
        cotangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad((logits * cotangent.to(logits)).sum(), [x, *model.parameters()])
    finally:
        fused_module.usable, fused_module.sequence_usable = real
    return [logits.detach(), *grads]


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
@pytest.mark.parametrize("sizes", [dict(), dict(read_heads=1, write_heads=1, shift_range=0, memory_slots=1),
                                   dict(shift_range=2, memory_width=1, controller_size=1)],
                         ids=["R2W3S1", "R1W1S0N1", "S2M1C1"])
@pytest.mark.parametrize("per_step", [False, True], ids=["sequence", "step"])
def test_fused_step_matches_the_unfused_cell_and_the_reference(controller, sizes, per_step):
    x = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    oracle = _run(_model(controller, torch.float64, "reference", **sizes), x, fused=False)
    for dtype in (torch.float64, torch.float32):
        model = _model(controller, dtype, "cpp", **sizes)
        assert fused_module.usable(model.cell, x.to(dtype))
        fused, unfused = _run(model, x.to(dtype), True, per_step), _run(model, x.to(dtype), False)
        reference = _run(_model(controller, dtype, "reference", **sizes), x.to(dtype), False)
        for i, (got, same_backend, ref, want) in enumerate(zip(fused, unfused, reference, oracle)):
            assert torch.isfinite(got).all(), i
            if dtype == torch.float64:
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m: f"tensor {i}: {m}")
                torch.testing.assert_close(got, same_backend, rtol=1e-12, atol=1e-13)
            else:
                ref_err = (ref.double() - want).abs().max().item()
                torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 + 4 * ref_err,
                                           msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("threads, batch", [(1, 4), (2, 1), (2, 5), (3, 2), (4, 7)])
def test_fused_sequence_chunks_give_the_per_step_result(threads, batch):
    """FusedSequence cuts the batch into one chunk per thread (at most one per row): every split gives what the
    per-step fused node gives, to the last bits in float64 (each row's arithmetic is the same; only the weight
    gradients' summation order differs)."""
    x = torch.randn(5, batch, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = _model("lstm", torch.float64, "cpp", memory_init="learned")
    want = _run(model, x, True, per_step=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = _run(model, x, True)
    finally:
        torch.set_num_threads(before)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13, msg=lambda m: f"tensor {i}: {m}")


def test_fused_sequence_backward_twice_with_retain_graph():
    model = _model("lstm", torch.float32, "cpp")
    x = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(5))
    loss = model(x).square().sum()
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_sequence_keeps_no_tape_without_gradients(monkeypatch):
    """Under no_grad (or with nothing requiring a gradient) the sequence keeps no per-step tensors for a backward
    that cannot come: the C++ forward is told so, and the logits are the same."""
    model = _model("lstm", torch.float32, "cpp")
    x = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(8))
    flags, real = [], extension._kernels

    class Recorder:
        def __init__(self, module):
            self.module = module

        def sequence_forward(self, *args):
            flags.append(args[-1])
            return self.module.sequence_forward(*args)

    monkeypatch.setattr(extension, "_kernels", lambda t: Recorder(real(t)))
    with_grad = model(x)
    with torch.no_grad():
        without = model(x)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = model(x)
    assert flags == [True, False, False]
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(frozen, with_grad.detach(), rtol=0, atol=0)


def test_fused_sequence_refuses_a_changed_initial_state():
    """The tape keeps the initial state's rows; changing one in place before the backward is autograd's error."""
    model = _model("lstm", torch.float32, "cpp")
    x = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(9))
    state = model.cell.initial_state(2)
    memory = state.memory.contiguous().requires_grad_(True)
    logits = fused_module.sequence(model.cell, x, state._replace(memory=memory))
    with torch.no_grad():
        memory.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logits.sum().backward()


def test_trace_and_sequence_agree():
    """return_trace runs the steps one by one (it needs every step's weightings): the same logits."""
    model = _model("lstm", torch.float32, "cpp")
    x = torch.randn(4, 3, 7, generator=torch.Generator().manual_seed(6))
    logits, trace = model(x, return_trace=True)
    # The two paths sum in different orders: equal up to float32 rounding, a few ulps at the logits' scale
    # (each is within 2e-7 of the float64 model here).
    ulps = 8 * torch.finfo(torch.float32).eps * logits.abs().max().item()
    torch.testing.assert_close(model(x), logits, rtol=0, atol=ulps)
    assert trace["read_weights"].shape == (4, 3, 2, 11)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gradcheck_of_the_fused_step(controller):
    """torch.autograd.gradcheck of one step with respect to every tensor input (state, memory, weights)."""
    model = _model(controller, torch.float64, "cpp", controller_size=4, memory_slots=5, memory_width=3,
                   read_heads=1, write_heads=2)
    cell = model.cell
    g = torch.Generator().manual_seed(3)
    state = cell.initial_state(2)
    lstm = controller == "lstm"
    h, c = (torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    memory = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    weights = [p.detach().clone() for p in (
        ([cell.controller.weight_ih, cell.controller.bias_ih, cell.controller.weight_hh, cell.controller.bias_hh]
         if lstm else [cell.controller.weight, cell.controller.bias])
        + [cell.heads.weight, cell.heads.bias, cell.output.weight, cell.output.bias])]
    inputs = [torch.randn(2, 7, generator=g, dtype=torch.float64), *([h, c] if lstm else []),
              torch.randn(2, 3, generator=g, dtype=torch.float64), state.w_read.detach().clone(),
              state.w_write.detach().clone(), memory, *weights]
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def step(*args):
        x, rest = args[0], list(args[1:])
        h_prev, c_prev = (rest.pop(0), rest.pop(0)) if lstm else (None, None)
        outs = FusedStep.apply(fused_module.step_kernels(cell, x), cell.layout, lstm, x, h_prev, c_prev, *rest)
        return tuple(o for o in outs if o is not None)

    assert torch.autograd.gradcheck(step, inputs)


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gradcheck_of_the_fused_sequence(controller):
    """gradcheck of FusedSequence with respect to the input, the initial state and every weight, split into two
    chunks."""
    model = _model(controller, torch.float64, "cpp", controller_size=4, memory_slots=5, memory_width=3,
                   read_heads=1, write_heads=2)
    cell, lstm = model.cell, controller == "lstm"
    g = torch.Generator().manual_seed(7)
    state = cell.initial_state(3)
    start = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)] if lstm else []
    start += [torch.randn(3, 3, generator=g, dtype=torch.float64), state.w_read.detach().clone(),
              state.w_write.detach().clone(), torch.randn(3, 5, 3, generator=g, dtype=torch.float64)]
    inputs = [torch.randn(3, 3, 7, generator=g, dtype=torch.float64), *start,
              *(p.detach().clone() for p in fused_module.weights(cell))]
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def run(x, *rest):
        rest = list(rest)
        h0, c0 = (rest.pop(0), rest.pop(0)) if lstm else (None, None)
        return FusedSequence.apply(fused_module.sequence_kernels(cell, x[0]), cell.layout, lstm, True, x, h0, c0, *rest)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.autograd.gradcheck(run, inputs)
    finally:
        torch.set_num_threads(before)


def test_when_the_fused_step_is_used():
    x = torch.zeros(2, 7)
    assert fused_module.usable(_model("lstm", torch.float32, "cpp").cell, x)
    assert fused_module.usable(_model("lstm", torch.float32, "auto").cell, x)  # auto picks cpp on CPU
    assert not fused_module.usable(_model("lstm", torch.float32, "reference").cell, x)
    assert not fused_module.usable(_model("lstm", torch.float16, "cpp").cell, x.half())


def test_training_steps_with_the_fused_step_equal_the_reference():
    from ntm_fast.tools.train import TrainConfig, Trainer

    def losses(backend):
        trainer = Trainer(TrainConfig(steps=3, batch_size=4, max_length=3, backend=backend, optimizer="adam",
                                      lr=1e-2, out_dir="unused", progress=False,
                                      model=dict(controller_size=8, memory_slots=9, memory_width=4)))
        trainer.model.double()
        trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-2)
        out = []
        for _ in range(3):
            batch, _ = trainer.task.training_batch(4, trainer.data_rng, 3, None)
            loss = trainer.task.loss(trainer.model(batch.inputs.double()), batch)
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            out.append(loss.item())
        return out, [p.detach() for p in trainer.model.parameters()]

    (cpp_losses, cpp_params), (ref_losses, ref_params) = losses("cpp"), losses("reference")
    assert cpp_losses == pytest.approx(ref_losses, rel=1e-10)
    for got, want in zip(cpp_params, ref_params):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_fused_step_outputs_are_contiguous():
    """The fused step's outputs behave like the unfused cell's (views, reshapes) and its input gradients are
    usable whatever their layout."""
    cases.backend_or_skip("cpp", "cpu")
    torch.manual_seed(0)
    model = NTMCell(5, 3, controller="lstm", controller_size=7, memory_slots=9, memory_width=4, backend="cpp")
    x = torch.randn(4, 5, requires_grad=True)
    logits, state = model(x, model.initial_state(4))
    assert logits.is_contiguous() and logits.view(-1).shape == (12,)
    logits2, _ = model(x, state)
    (logits2.sum() + logits.sum()).backward()
    assert torch.isfinite(x.grad).all()
