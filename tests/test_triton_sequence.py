"""The whole-sequence Triton kernels (kernels/sequence.py) against the reference NTM.

sequence_forward / sequence_backward are plain launchers: here they are driven the way an autograd node
drives them (the initial state's gradients are passed on to the parameters it is made of) and compared with
`NTM(..., backend="reference")`: the logits, ∂L/∂x and every parameter's gradient for a fixed random ∂L/∂logits.
float64 to 1e-9; float32 within a few times the reference's own float32 error (both against a float64
oracle). Every kernel output starts as NaN (poisoned_outputs), so an element the kernels forget fails.

Without a GPU the kernels run under TRITON_INTERPRET=1 (conftest.py), whose cost is per operation: the
grid below is a representative cover of the sizes (both controllers, R, W ∈ {1, 2}, N ∈ {7, 33, 128},
M ∈ {1, 5, 20}, S ∈ {0, 1, 2}, T ∈ {1, 2, 17}, B not a multiple of the 16-row batch block, every memory
init, checkpoint intervals 1, inside T and beyond T) rather than their product.
"""
import ast
import copy
import importlib
import os

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ntm_fast.model import NTM
from ntm_fast.ops import HeadLayout
from ntm_fast.ops.dispatch import import_kernels, unavailable_reason
from ntm_fast.ops.reference import COSINE_EPS, sharpen_floor
from ntm_fast.ops.shared import poisoned_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(unavailable_reason("triton", DEVICE) is not None,
                                reason=f"triton unavailable: {unavailable_reason('triton', DEVICE)}")

X_SIZE, Y_SIZE = 3, 4


@pytest.fixture(scope="module")
def seq():
    import_kernels()
    return importlib.import_module("ntm_fast.kernels.sequence")


def make_model(controller, R, W, N, M, S, init, dtype, controller_size=10, seed=0):
    torch.manual_seed(seed)
    model = NTM(X_SIZE, Y_SIZE, controller=controller, controller_size=controller_size, memory_slots=N,
                memory_width=M, read_heads=R, write_heads=W, shift_range=S, memory_init=init, backend="reference")
    with torch.no_grad():  # initial weightings less peaked than the default, so every slot's gradient matters
        model.cell.w_logits0.mul_(0.1)
    return model.to(dtype=dtype, device=DEVICE)


def weights(cell):
    """The cell's weights in the launchers' order (W_hh, b_hh None for a feedforward controller)."""
    if cell.controller_kind == "lstm":
        c = cell.controller
        controller = (c.weight_ih, c.bias_ih, c.weight_hh, c.bias_hh)
    else:
        controller = (cell.controller.weight, cell.controller.bias, None, None)
    return controller + (cell.heads.weight, cell.heads.bias, cell.output.weight, cell.output.bias)


def reference_run(model, x, d_logits, seed):
    """(logits, {parameter name: gradient}, ∂L/∂x) of the reference NTM for L = Σ logits·d_logits."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the random memory init draws from it
    logits = model(x)
    (logits * d_logits).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}, x.grad


def kernel_run(seq, model, x, d_logits, seed, checkpoint_every):
    """The same through sequence_forward and sequence_backward, as an autograd node around them would."""
    cell = model.cell
    lstm = cell.controller_kind == "lstm"
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    state = cell.initial_state(x.shape[1])
    h0, c0 = state.controller if lstm else (None, None)
    initial = (h0, c0, state.reads, state.w_read, state.w_write, state.memory)
    ws = weights(cell)
    plain = lambda ts: [None if t is None else t.detach() for t in ts]  # noqa: E731
    with poisoned_outputs():
        logits, saved = seq.sequence_forward(x, *plain(initial), plain(ws), cell.layout, **numerics(x),
                                             checkpoint_every=checkpoint_every)
        grads = seq.sequence_backward(saved, d_logits, plain((ws[0], ws[2], ws[4], ws[6])))
    d_x, d_initial, (dW_ih, db_ih, dW_hh, dW_heads, db_heads, dW_out, db_out) = grads[0], grads[1:7], grads[7:]
    # The initial state is made of parameters (h0, c0, read0, w_logits0, learned memory0) by ordinary ops.
    pairs = [(t, g) for t, g in zip(initial, d_initial) if t is not None and t.requires_grad]
    torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    controller = (dW_ih, db_ih, dW_hh, db_ih) if lstm else (dW_ih, db_ih)
    for w, g in zip([w for w in ws if w is not None], controller + (dW_heads, db_heads, dW_out, db_out)):
        w.grad = g
    return logits, {n: p.grad for n, p in model.named_parameters()}, d_x


def numerics(x):
    """The constants every backend receives from the reference."""
    return dict(eps=COSINE_EPS, tiny=sharpen_floor(x.dtype))


def inputs(T, B, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, X_SIZE, generator=g, dtype=torch.float64)
    d_logits = torch.randn(T, B, Y_SIZE, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=DEVICE), d_logits.to(dtype=dtype, device=DEVICE)


def flat(result):
    logits, grads, d_x = result
    return {"logits": logits, "d_x": d_x, **{f"grad {n}": g for n, g in grads.items()}}


# (controller, R, W, N, M, S, T, B, memory init, checkpoint_every)
FLOAT64_CASES = [
    ("lstm", 1, 1, 7, 5, 1, 17, 3, "constant", 4),  # 5 segments, the last one short
    ("feedforward", 1, 1, 33, 5, 2, 17, 2, "learned", 1),  # a checkpoint every step
    ("feedforward", 2, 2, 33, 1, 2, 2, 17, "learned", 1),  # two batch blocks, the second with one row
    ("lstm", 2, 1, 128, 20, 0, 1, 5, "random", 5),  # k > T
    ("lstm", 1, 2, 7, 20, 1, 2, 3, "random", 3),
]


@pytest.mark.parametrize("case", FLOAT64_CASES, ids=lambda c: "{}-R{}W{}-N{}M{}S{}-T{}B{}-{}-k{}".format(*c))
def test_float64_matches_reference(seq, case):
    controller, R, W, N, M, S, T, B, init, k = case
    model = make_model(controller, R, W, N, M, S, init, torch.float64)
    x, d_logits = inputs(T, B, torch.float64)
    expected = flat(reference_run(model, x, d_logits, seed=7))
    got = flat(kernel_run(seq, model, x, d_logits, seed=7, checkpoint_every=k))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        if value is None:  # a parameter the loss does not reach (none here, but be explicit)
            assert got[name] is None, name
            continue
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


FLOAT32_CASES = [
    ("lstm", 1, 1, 128, 20, 1, 8, 3, "constant", 3),  # the default model's memory and heads
    ("feedforward", 2, 2, 7, 5, 0, 2, 3, "learned", 1),
]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=lambda c: "{}-R{}W{}-N{}M{}S{}-T{}B{}-{}-k{}".format(*c))
def test_float32_within_reference_error(seq, case):
    controller, R, W, N, M, S, T, B, init, k = case
    model64 = make_model(controller, R, W, N, M, S, init, torch.float64)
    model32 = copy.deepcopy(model64).float()
    x, d_logits = inputs(T, B, torch.float64)
    oracle = flat(reference_run(model64, x, d_logits, seed=7))
    ref32 = flat(reference_run(model32, x.float(), d_logits.float(), seed=7))
    got = flat(kernel_run(seq, model32, x.float(), d_logits.float(), seed=7, checkpoint_every=k))
    for name, value in oracle.items():
        assert got[name].dtype == torch.float32, name
        ref_err = (ref32[name].double() - value).abs().max().item()
        torch.testing.assert_close(got[name].double(), value, rtol=1e-4, atol=1e-5 + 4 * ref_err,
                                   msg=lambda m: f"{name} (reference float32 error {ref_err:.2e}): {m}")


@pytest.mark.parametrize("gates", [1, 4])
def test_tiled_slots(seq, monkeypatch, gates):
    # An 8-slot memory tile and a 16-slot one for the [B, N] vectors: the addressing's running softmaxes, the
    # shift across tiles and the checkpoint copies and recomputed writes walk 5 (and 3) slot tiles; 16-wide
    # matrix-product tiles walk the controller's 33 columns (3 tiles, the last one short) and depth, the LSTM's
    # gates one walk each or all four in one. The backward's tiles differ from the forward's.
    monkeypatch.setenv("NTM_FAST_SEQUENCE_FORWARD",
                       f"memory={16 * 8 * 8}, slot={16 * 16}, cols=16, depth=16, gates={gates}")
    monkeypatch.setenv("NTM_FAST_SEQUENCE_BACKWARD", f"memory={16 * 4 * 8},slot={16 * 32},cols=32,depth=16,warps=4")
    assert seq.kernel_settings("forward") == (16 * 8 * 8, 16 * 16, 16, 16, 8, "ieee", gates, 16, 1)
    assert seq.kernel_settings("backward")[:6] == (16 * 4 * 8, 16 * 32, 32, 16, 4, "ieee")
    model = make_model("lstm", 1, 1, 33, 5, 1, "learned", torch.float64, controller_size=33)
    x, d_logits = inputs(3, 2, torch.float64)
    expected = flat(reference_run(model, x, d_logits, seed=7))
    got = flat(kernel_run(seq, model, x, d_logits, seed=7, checkpoint_every=2))
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("forward_rows, backward_rows", [(1, 8), (8, 32), (32, 1)])
def test_rows_per_program(seq, monkeypatch, forward_rows, backward_rows):
    # 17 batch rows over programs of 1, 8 or 32 rows (17, 3 or 1 programs; the last one part empty), forward
    # and backward each its own: the backward reads the forward's saved rows whatever its own programs.
    monkeypatch.setenv("NTM_FAST_SEQUENCE_FORWARD", f"rows={forward_rows}")
    monkeypatch.setenv("NTM_FAST_SEQUENCE_BACKWARD", f"rows={backward_rows}")
    assert (seq.kernel_settings("forward").rows, seq.kernel_settings("backward").rows) == (forward_rows,
                                                                                        backward_rows)
    model = make_model("lstm", 1, 1, 7, 5, 1, "learned", torch.float64)
    x, d_logits = inputs(3, 17, torch.float64)
    expected = flat(reference_run(model, x, d_logits, seed=7))
    got = flat(kernel_run(seq, model, x, d_logits, seed=7, checkpoint_every=2))
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_the_sweeps_settings_are_valid(seq, monkeypatch):
    # benchmarks/sequence_sweep.py's default lists are read on a GPU lease only: a bad entry would waste it.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "sequence_sweep.py")
    with open(path) as handle:
        tree = ast.parse(handle.read())
    lists = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
             if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("FORWARD", "BACKWARD")}
    assert lists["FORWARD"][0] == lists["BACKWARD"][0] == ""
    for kernel, settings in (("forward", lists["FORWARD"]), ("backward", lists["BACKWARD"])):
        for setting in settings:
            monkeypatch.setenv(seq.SETTINGS_ENV[kernel], setting)
            assert isinstance(seq.kernel_settings(kernel), seq.KernelSettings), setting


class AtenOps(TorchDispatchMode):
    """Counts the ATen ops run inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_launches_do_not_grow_with_T(seq, launches, controller):
    # A forward and backward of the whole sequence: one launch each way and the same ATen ops at any T.
    model = make_model(controller, 1, 1, 7, 3, 1, "constant", torch.float64)
    kernels, aten = {}, {}
    for T in (1, 4):
        launches.clear()
        x, d_logits = inputs(T, 2, torch.float64)
        with AtenOps() as ops:
            kernel_run(seq, model, x, d_logits, seed=0, checkpoint_every=2)
        kernels[T], aten[T] = list(launches), ops.count
    assert kernels[1] == kernels[4] == ["_sequence_fwd_kernel", "_sequence_bwd_kernel"], kernels
    assert aten[1] == aten[4], aten


def test_saved_bytes_per_step(seq):
    """What the forward keeps is the module docstring's list, and far less than the reference keeps."""
    T, B, k = 4, 2, 2
    model = make_model("lstm", 1, 1, 128, 20, 1, "constant", torch.float32, controller_size=100)
    cell = model.cell
    x, _ = inputs(T, B, torch.float32)
    state = cell.initial_state(B)
    plain = lambda ts: [None if t is None else t.detach() for t in ts]  # noqa: E731
    _, saved = seq.sequence_forward(x, *plain((*state.controller, state.reads, state.w_read, state.w_write,
                                                state.memory)), plain(weights(cell)), cell.layout,
                                    **numerics(x), checkpoint_every=k)
    kept = sum(t.numel() * t.element_size() for t in saved[2:])  # x is the caller's input, not a copy
    C, N, M, P = 100, 128, 20, 92
    per_row_and_step = 6 * C + P + M + 4 * N  # hs, cs, 4 gates; heads; reads; both weightings and content weightings
    assert kept == 4 * (B * (T * per_row_and_step + 2 * C + M + 2 * N) + -(-T // k) * B * N * M)

    storages = {}
    own = {p.untyped_storage().data_ptr() for p in model.parameters()} | {
        b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    assert kept * 3 < sum(storages.values())  # here 83,936 B against 270,400 B


def test_bad_arguments_name_the_argument(seq):
    model = make_model("lstm", 1, 1, 7, 3, 1, "constant", torch.float64)
    cell = model.cell
    x, _ = inputs(2, 3, torch.float64)
    state = cell.initial_state(3)
    args = [t.detach() for t in (*state.controller, state.reads, state.w_read, state.w_write, state.memory)]
    ws = [w.detach() for w in weights(cell)]
    layout, constants = HeadLayout(1, 1, 3, 1), numerics(x)
    with pytest.raises(ValueError, match="'w_read0'"):
        seq.sequence_forward(x, *args[:3], args[3][:, :, :5], *args[4:], ws, layout, **constants)
    with pytest.raises(ValueError, match="'W_out'"):
        seq.sequence_forward(x, *args, (*ws[:6], ws[6].float(), ws[7]), layout, **constants)
    with pytest.raises(ValueError, match="'checkpoint_every'"):
        seq.sequence_forward(x, *args, ws, layout, **constants, checkpoint_every=0)
    with pytest.raises(ValueError, match="'dot_precision'"):
        seq.sequence_forward(x, *args, ws, layout, **constants, dot_precision="fast")
    for name, value, message in (
            ("NTM_FAST_SEQUENCE_FORWARD", "memory=1000", "memory must be a power of two of at least 16, got '1000'"),
            ("NTM_FAST_SEQUENCE_BACKWARD", "slot=8", "slot must be a power of two of at least 16, got '8'"),
            ("NTM_FAST_SEQUENCE_FORWARD", "depth=big", "depth must be a power of two of at least 16, got 'big'"),
            ("NTM_FAST_SEQUENCE_FORWARD", "warps=3", "warps must be one of 4, 8, 16, got '3'"),
            ("NTM_FAST_SEQUENCE_BACKWARD", "precision=bf16", "precision must be one of ieee, tf32, tf32x3, got 'bf16'"),
            ("NTM_FAST_SEQUENCE_FORWARD", "gates=2", "gates must be one of 1, 4, got '2'"),
            ("NTM_FAST_SEQUENCE_BACKWARD", "rows=12", "rows must be one of 1, 2, 4, 8, 16, 32, 64, got '12'"),
            ("NTM_FAST_SEQUENCE_FORWARD", "rows=128", "rows must be one of 1, 2, 4, 8, 16, 32, 64, got '128'"),
            ("NTM_FAST_SEQUENCE_BACKWARD", "stages=0", "stages must be one of 1, 2, 3, got '0'"),
            ("NTM_FAST_SEQUENCE_FORWARD", "tile=64", "unknown field 'tile' in 'tile=64'; expected fields memory, "
                                                     "slot, cols, depth, warps, precision, gates, rows, stages")):
        with pytest.MonkeyPatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ValueError, match=f"{name}: {re.escape(message)}"):
                seq.sequence_forward(x, *args, ws, layout, **constants)
    # dot_precision (and NTM_FAST_DOT_PRECISION) set both kernels' precision; the backward's goes with the tape.
    _, saved = seq.sequence_forward(x, *args, ws, layout, **constants, dot_precision="tf32x3")
    assert saved.config.backward.precision == "tf32x3"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NTM_FAST_SEQUENCE_FORWARD", "precision=tf32x3")
        env.setenv("NTM_FAST_DOT_PRECISION", "tf32")
        assert seq.kernel_settings("forward").precision == seq.kernel_settings("backward").precision == "tf32"
        env.setenv("NTM_FAST_DOT_PRECISION", "fast")
        with pytest.raises(ValueError, match="NTM_FAST_DOT_PRECISION must be one of ieee, tf32, tf32x3, got 'fast'"):
            seq.sequence_forward(x, *args, ws, layout, **constants)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gpu_default_model(seq, controller, dtype):
    # The compiled kernels (GPU tiles, barriers between phases) at the default model's sizes, several batch
    # blocks and a copy-task length.
    model64 = make_model(controller, 1, 1, 128, 20, 1, "learned", torch.float64, controller_size=100)
    model = copy.deepcopy(model64).to(dtype)
    x, d_logits = inputs(20, 100, torch.float64)
    oracle = flat(reference_run(model64, x, d_logits, seed=7))
    ref = flat(reference_run(model, x.to(dtype), d_logits.to(dtype), seed=7))
    got = flat(kernel_run(seq, model, x.to(dtype), d_logits.to(dtype), seed=7, checkpoint_every=5))
    for name, value in oracle.items():
        ref_err = (ref[name].double() - value).abs().max().item()
        rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-5 + 4 * ref_err)
        torch.testing.assert_close(got[name].double(), value, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name} (reference error {ref_err:.2e}): {m}")


# --- the node as the model uses it: NTM.forward with backend "triton" --------------------------------------
def triton_model(controller, dtype, **sizes):
    """A small model with backend "triton" and its twin with the reference (same weights)."""
    sizes = dict(dict(R=1, W=1, N=7, M=3, S=1, init="learned"), **sizes)
    reference = make_model(controller, sizes["R"], sizes["W"], sizes["N"], sizes["M"], sizes["S"], sizes["init"],
                           dtype)
    triton_twin = copy.deepcopy(reference)
    triton_twin.backend = "triton"
    return triton_twin, reference


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_ntm_forward_runs_the_sequence_node(seq, launches, controller):
    """NTM.forward on the triton backend is the sequence node (one launch each way) and equals the reference."""
    from ntm_fast.model import fused

    model, reference = triton_model(controller, torch.float64, R=2, W=1)
    x, d_logits = inputs(5, 3, torch.float64)
    assert fused.sequence_usable(model.cell, x[0])
    expected = flat(reference_run(reference, x, d_logits, seed=3))
    with poisoned_outputs():
        got = flat(reference_run(model, x, d_logits, seed=3))  # the same driver: model(x), then backward
    assert launches == ["_sequence_fwd_kernel", "_sequence_bwd_kernel"], launches
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_gradcheck_of_the_sequence_node(seq):
    """float64 gradcheck of FusedSequence with respect to the input, the initial state and every weight
    (fast mode: random directions, a few kernel runs under the interpreter)."""
    from ntm_fast.model import fused
    from ntm_fast.ops.autograd import FusedSequence

    model, _ = triton_model("lstm", torch.float64, N=5, M=2, W=2)
    cell = model.cell
    g = torch.Generator().manual_seed(11)
    state = cell.initial_state(2)
    start = [torch.randn(2, cell.controller_size, generator=g, dtype=torch.float64) for _ in range(2)]
    start += [torch.randn(2, 2, generator=g, dtype=torch.float64), state.w_read.detach().clone(),
              state.w_write.detach().clone(), torch.randn(2, 5, 2, generator=g, dtype=torch.float64)]
    leaves = [t.detach().to(DEVICE).clone().requires_grad_(True) for t in (
        torch.randn(3, 2, X_SIZE, generator=g, dtype=torch.float64), *start, *fused.weights(cell))]
    kernels = fused.sequence_kernels(cell, leaves[0][0])

    def run(x, *rest):
        return FusedSequence.apply(kernels, cell.layout, True, True, x, *rest)

    assert torch.autograd.gradcheck(run, leaves, fast_mode=True)


def test_three_training_steps_equal_the_reference(seq):
    """Three RMSprop steps of the copy-task loss: the same parameters as the reference's (float64)."""
    model, reference = triton_model("lstm", torch.float64, N=9, M=4)
    optimizers = [torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.9) for m in (model, reference)]
    for step in range(3):
        x, target = inputs(4, 3, torch.float64, seed=step)
        for m, opt in zip((model, reference), optimizers):
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(m(x), torch.sigmoid(target)).backward()
            opt.step()
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_a_training_steps_launches_do_not_grow_with_T(seq, launches):
    """A whole training step (forward, loss, backward) through the model: the same Triton launches and ATen
    ops at T = 4 and T = 8."""
    model, _ = triton_model("lstm", torch.float64)
    kernels, aten = {}, {}
    for T in (4, 4, 8):  # the first run only warms up (first-call allocations)
        launches.clear()
        model.zero_grad(set_to_none=True)
        x, target = inputs(T, 2, torch.float64)
        with AtenOps() as ops:
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.sigmoid(target)).backward()
        kernels[T], aten[T] = list(launches), ops.count
    assert kernels[4] == kernels[8] == ["_sequence_fwd_kernel", "_sequence_bwd_kernel"], kernels
    assert aten[4] == aten[8], aten


def test_a_sequence_the_kernels_decline_runs_step_by_step(seq, launches, caplog, monkeypatch):
    """Sizes over the kernels' limit: NTM.forward says why once (log) and runs the per-step kernels."""
    import logging

    model, reference = triton_model("feedforward", torch.float64, M=4)
    monkeypatch.setattr(seq, "MAX_HEAD_WIDTH", 4)  # (R+W)·M = 8 is over it
    x, d_logits = inputs(2, 2, torch.float64)
    with caplog.at_level(logging.INFO, logger="ntm_fast"):
        got = flat(reference_run(model, x, d_logits, seed=1))
    assert "_sequence_fwd_kernel" not in launches and "_memory_step_fwd_kernel" in launches
    assert "(R+W)·M = 8 is over the sequence kernels' limit of 4" in caplog.text
    for name, value in flat(reference_run(reference, x, d_logits, seed=1)).items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")
