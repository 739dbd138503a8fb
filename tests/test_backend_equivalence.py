"""Every kernel backend against the reference: forward and backward, random and adversarial inputs at odd
sizes, float32 and float64, with kernel outputs poisoned (NaN) before the kernel runs; float64 gradcheck
through each custom backward.

A backend that cannot run here is skipped with its reason, unless NTM_FAST_REQUIRE_BACKENDS lists it
(CI sets it, so a backend that silently stopped loading fails the run instead of skipping).
"""

import pytest
import torch

import cases
import ntm_fast
from ntm_fast import ops
from ntm_fast.ops.shared import poisoned_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_BACKENDS = ("triton", "cpp", "cuda")

# (B, N, M, H, S): odd sizes; S up to 3 with N=7 makes the shift window wrap the whole memory.
ADDRESS_SIZES = [(1, 7, 1, 1, 0), (3, 33, 20, 2, 1), (5, 128, 33, 4, 3), (2, 7, 20, 3, 3), (4, 33, 1, 1, 2)]
# (B, N, M, R, W, S) for memory_step.
STEP_SIZES = [(1, 7, 1, 1, 1, 0), (3, 33, 20, 1, 1, 1), (5, 128, 33, 2, 2, 3), (2, 7, 20, 4, 3, 2)]


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    return cases.backend_or_skip(request.param, torch.device(DEVICE).type)


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def run_op(op, inputs, backend, upstream_seed=0):
    """Forward outputs and gradients of every input for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in cases.flat_tensors(inputs)]
    call = cases.rebuild(inputs, leaves)
    with poisoned_outputs():
        outs = _outputs(getattr(ops, op)(**call, backend=backend))
    g = torch.Generator().manual_seed(upstream_seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, leaves)]
    return [o.detach() for o in outs], grads


def assert_matches_reference(op, make, dtype, backend):
    """Backend output in `dtype` vs the reference in `dtype`, both judged against the float64 oracle.

    float64: tight absolute/relative tolerances. float32: the backend may be off the float64 oracle by
    at most a few times the reference's own float32 error (plus a small floor); adversarial inputs such as
    β = 1e3, γ = 50 amplify rounding, and this keeps the bar at "as exact as the reference".
    """
    oracle = run_op(op, make(torch.float64), "reference")
    got = run_op(op, make(dtype), backend)
    ref = run_op(op, make(dtype), "reference") if dtype != torch.float64 else oracle
    for part, (o_list, g_list, r_list) in {"output": (oracle[0], got[0], ref[0]),
                                          "gradient": (oracle[1], got[1], ref[1])}.items():
        for i, (o, x, r) in enumerate(zip(o_list, g_list, r_list)):
            assert torch.isfinite(x).all(), f"{backend} {op} {part} {i}: non-finite values {x}"
            if dtype == torch.float64:
                torch.testing.assert_close(x, o, rtol=1e-7, atol=1e-9, msg=lambda m: f"{part} {i}: {m}")
            else:
                ref_err = (r.double() - o).abs().max().item()
                torch.testing.assert_close(x.double(), o, rtol=1e-4, atol=1e-5 + 4 * ref_err,
                                           msg=lambda m: f"{part} {i} (reference f32 error {ref_err:.2e}): {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", cases.KINDS)
@pytest.mark.parametrize("size", ADDRESS_SIZES, ids=lambda s: "B{}N{}M{}H{}S{}".format(*s))
def test_address(backend, size, kind, dtype):
    B, N, M, H, S = size
    assert_matches_reference(
        "address", lambda dt: cases.address_inputs(B, N, M, H, S, kind, dtype=dt, device=DEVICE), dtype, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", cases.KINDS)
@pytest.mark.parametrize("size", [(1, 7, 1, 1), (3, 33, 20, 2), (5, 128, 33, 4)], ids=lambda s: "B{}N{}M{}H{}".format(*s))
def test_read(backend, size, kind, dtype):
    assert_matches_reference(
        "read", lambda dt: cases.read_inputs(*size, kind, dtype=dt, device=DEVICE), dtype, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", cases.KINDS)
@pytest.mark.parametrize("size", [(1, 7, 1, 1), (3, 33, 20, 2), (5, 128, 33, 4), (2, 7, 20, 3)],
                         ids=lambda s: "B{}N{}M{}W{}".format(*s))
def test_write(backend, size, kind, dtype):
    assert_matches_reference(
        "write", lambda dt: cases.write_inputs(*size, kind, dtype=dt, device=DEVICE), dtype, backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", cases.KINDS)
@pytest.mark.parametrize("size", STEP_SIZES, ids=lambda s: "B{}N{}M{}R{}W{}S{}".format(*s))
def test_memory_step(backend, size, kind, dtype):
    assert_matches_reference(
        "memory_step", lambda dt: cases.memory_step_inputs(*size, kind, dtype=dt, device=DEVICE), dtype, backend)


GRADCHECK_INPUTS = {
    "address": lambda: cases.address_inputs(2, 7, 3, 2, 1, device=DEVICE),
    "read": lambda: cases.read_inputs(2, 7, 3, 2, device=DEVICE),
    "write": lambda: cases.write_inputs(2, 7, 3, 2, device=DEVICE),
    "memory_step": lambda: cases.memory_step_inputs(2, 7, 3, 1, 2, 1, device=DEVICE),
}


@pytest.mark.parametrize("op", list(GRADCHECK_INPUTS))
def test_gradcheck(backend, op):
    inputs = GRADCHECK_INPUTS[op]()
    leaves = [t.detach().clone().requires_grad_(True) for t in cases.flat_tensors(inputs)]
    fn = lambda *xs: getattr(ntm_fast, op)(**cases.rebuild(inputs, xs), backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)
