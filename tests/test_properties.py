"""Property-based equivalence (hypothesis): every kernel backend against the reference on drawn shapes and
values, forward and backward, including the non-finite and extreme input the README's policy covers.

Drawn: sizes down to N = 1, M = 1 and shift ranges S >= N (the shift window wraps the memory more than
once), up to 3 heads; float32 and float64; per argument a random, one-hot, all-zero or adversarial value
(keys parallel to a memory row, full erases, β and γ up to 1e30 in float64); and in half of the examples
one element of one argument set to NaN, +Inf or -Inf. Each example checks, for forward outputs and the
gradients of every input (for a fixed random upstream gradient):

* NaN exactly where the reference has NaN, the same infinities where it has infinities;
* elsewhere the values of the float64 oracle, within the tolerances of test_backend_equivalence (float32:
  a few times the reference's own float32 error) widened by how far the oracle itself moves when the
  inputs move by a few ulps (see _spread: large only for ill-conditioned draws);
* or, when the reference raises, the same exception type.

Examples are derandomized. The number per test comes from the hypothesis profile registered in conftest.py:
"ntm_fast" by default (sized for CI), `--hypothesis-profile=long` for a longer local run.
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cases
from ntm_fast import ops
from ntm_fast.ops.checks import BACKEND_DTYPES
from test_backend_equivalence import DEVICE, KERNEL_BACKENDS, run_op

# NaN and Inf inputs make numpy (under the Triton interpreter) warn about invalid values: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")

DTYPES = (torch.float32, torch.float64)
POISON = (float("nan"), float("inf"), -float("inf"))
_EPS = {dtype: torch.finfo(dtype).eps for dtype in DTYPES}


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def backend(request):
    return cases.backend_or_skip(request.param, torch.device(DEVICE).type)


# --- drawing inputs ------------------------------------------------------------------------------------
# Shapes and the kind of each value are drawn by hypothesis; the numbers themselves come from a torch
# generator seeded by a drawn seed (drawing every float through hypothesis would cost more than the kernels).


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _distribution(kind, shape, g):
    """A weighting over the last dimension: random (softmax), one-hot, all zero, or uniform."""
    if kind == "one_hot":
        idx = torch.randint(0, shape[-1], shape[:-1], generator=g)
        return torch.nn.functional.one_hot(idx, shape[-1]).double()
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "uniform":
        return torch.full(shape, 1.0 / shape[-1], dtype=torch.float64)
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, -1)


def _positive(kind, shape, g, low, high):
    """β or γ: random in [low, high), or the drawn constant."""
    if kind == "random":
        return low + torch.rand(shape, generator=g, dtype=torch.float64) * (high - low)
    return torch.full(shape, float(kind), dtype=torch.float64)


def _unit(kind, shape, g):
    """A gate or an erase vector: random in [0, 1], all 0, all 1, or each element 0 or 1."""
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "ones":
        return torch.ones(shape, dtype=torch.float64)
    if kind == "binary":
        return (torch.rand(shape, generator=g, dtype=torch.float64) > 0.5).double()
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _memory(kind, B, N, M, g):
    mem = torch.randn(B, N, M, generator=g, dtype=torch.float64)
    if kind == "zero_rows":
        mem[:, ::2] = 0.0
    elif kind == "zeros":
        mem.zero_()
    elif kind == "large":
        mem = mem * 1e3
    return mem


def _keys(kind, H, memory, g):
    """[B, H, M] keys: random, all zero, or each a multiple of a memory row (cosine similarity ±1)."""
    B, N, M = memory.shape
    if kind == "zeros":
        return torch.zeros(B, H, M, dtype=torch.float64)
    if kind == "parallel":
        rows = torch.randint(0, N, (B, H), generator=g)
        scale = torch.randn(B, H, 1, generator=g, dtype=torch.float64) * 2
        return memory.gather(1, rows.unsqueeze(-1).expand(B, H, M)) * scale
    return torch.randn(B, H, M, generator=g, dtype=torch.float64)


# β and γ beyond the existing adversarial 1e3 and 50 only in float64. In float32 the smoothing ε of the
# cosine is below the resolution of K near ±1, so with β·γ in the thousands two slots that float64 tells
# apart are tied or not by rounding alone, and the weighting's gradient is rounding noise on every backend
# (the reference's included); float32 at the dtype's range is test_extreme_parameters_up_to_the_dtype_range.
BETAS = {torch.float32: ["random", 0.0, 1e3], torch.float64: ["random", 0.0, 1e3, 1e10, 1e30]}
GAMMAS = {torch.float32: ["random", 1.0, 50.0], torch.float64: ["random", 1.0, 50.0, 1e4, 1e30]}


@st.composite
def heads(draw, B, H, N, memory, S, g, dtype, write=False):
    """Activated parameters of H heads, each drawn from its own kind."""
    K = 2 * S + 1
    M = memory.shape[-1]
    p = dict(
        key=_keys(draw(st.sampled_from(["random", "zeros", "parallel"])), H, memory, g),
        beta=_positive(draw(st.sampled_from(BETAS[dtype])), (B, H), g, 0.0, 10.0),
        gate=_unit(draw(st.sampled_from(["random", "zeros", "ones", "binary"])), (B, H), g),
        shift=_distribution(draw(st.sampled_from(["random", "one_hot"])), (B, H, K), g),
        gamma=_positive(draw(st.sampled_from(GAMMAS[dtype])), (B, H), g, 1.0, 5.0),
    )
    if write:
        p["erase"] = _unit(draw(st.sampled_from(["random", "zeros", "ones", "binary"])), (B, H, M), g)
        p["add"] = torch.randn(B, H, M, generator=g, dtype=torch.float64)
    w_prev = _distribution(draw(st.sampled_from(["random", "one_hot", "zeros", "uniform"])), (B, H, N), g)
    return p, w_prev


@st.composite
def sizes(draw):
    # S up to 3 with N down to 1: the shift window can be wider than the memory.
    return dict(B=draw(st.integers(1, 3)), N=draw(st.integers(1, 9)), M=draw(st.integers(1, 5)),
                H=draw(st.integers(1, 3)), W=draw(st.integers(1, 3)), S=draw(st.integers(0, 3)))


@st.composite
def op_inputs(draw, op):
    """(inputs as float64 keyword arguments of `op`, dtype to run in)."""
    dtype = draw(st.sampled_from(DTYPES))
    z = draw(sizes())
    B, N, M, S = z["B"], z["N"], z["M"], z["S"]
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    memory = _memory(draw(st.sampled_from(["random", "zero_rows", "zeros", "large"])), B, N, M, g)
    if op == "address":
        p, w_prev = draw(heads(B, z["H"], N, memory, S, g, dtype))
        inputs = dict(memory=memory, **p, w_prev=w_prev)
    elif op == "read":
        inputs = dict(memory=memory, w=_distribution(draw(st.sampled_from(["random", "one_hot", "zeros"])),
                                                     (B, z["H"], N), g))
    elif op == "write":
        p, w = draw(heads(B, z["W"], N, memory, 0, g, dtype, write=True))
        inputs = dict(memory=memory, w=w, erase=p["erase"], add=p["add"])
    else:
        rp, w_read_prev = draw(heads(B, z["H"], N, memory, S, g, dtype))
        wp, w_write_prev = draw(heads(B, z["W"], N, memory, S, g, dtype, write=True))
        inputs = dict(memory=memory, read_heads=ops.ReadHeads(**rp), write_heads=ops.WriteHeads(**wp),
                      w_read_prev=w_read_prev, w_write_prev=w_write_prev)
    if draw(st.booleans()):  # one non-finite element in one argument
        tensors = [t.clone() for t in cases.flat_tensors(inputs)]
        target = tensors[draw(st.integers(0, len(tensors) - 1))]
        target.view(-1)[draw(st.integers(0, target.numel() - 1))] = draw(st.sampled_from(POISON))
        inputs = cases.rebuild(inputs, tensors)
    return inputs, dtype


# --- comparing ------------------------------------------------------------------------------------------


def _named(inputs):
    """(name, tensor) of every input tensor, heads expanded as 'read_heads.beta' etc."""
    for name, value in inputs.items():
        if isinstance(value, tuple):
            yield from ((f"{name}.{field}", t) for field, t in zip(value._fields, value))
        else:
            yield name, value


def _as(inputs, dtype):
    return cases.rebuild(inputs, [t.to(dtype=dtype, device=DEVICE) for t in cases.flat_tensors(inputs)])


def _attempt(op, inputs, backend):
    """(outputs, gradients) of one call, or the exception it raised."""
    try:
        return run_op(op, inputs, backend)
    except Exception as err:  # noqa: BLE001 - compared by type with the reference's
        return err


def _spread(op, inputs, dtype, oracle):
    """Per output and gradient: how far the float64 reference moves when every input moves by a few units in
    the last place of `dtype` (two random relative perturbations of 4 eps). That is the error any
    backward-stable computation in `dtype` may show, and it is large exactly where the drawn values make the
    op ill-conditioned (γ = 1e4 on two nearly tied slots, γ = 1e30 on a uniform w_s whose gradients are sums
    of terms of size γ that cancel); elsewhere it is a few eps times the values."""
    eps = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(0)
    spread = [torch.zeros((), dtype=torch.float64) for _ in oracle[0] + oracle[1]]
    for _ in range(2):
        moved = [t * (1 + 4 * eps * (2 * torch.rand(t.shape, generator=g, dtype=torch.float64) - 1))
                 for t in cases.flat_tensors(inputs)]
        result = _attempt(op, _as(cases.rebuild(inputs, moved), torch.float64), "reference")
        if isinstance(result, Exception):
            raise AssertionError("the reference raised on perturbed inputs") from result
        for i, (m, o) in enumerate(zip(result[0] + result[1], oracle[0] + oracle[1])):
            both = torch.isfinite(m) & torch.isfinite(o)
            # An element finite at the drawn inputs but not a few ulps away is as ill-conditioned as it gets.
            gap = torch.where(both, (m - o).abs(), torch.where(torch.isfinite(o), torch.inf, 0.0))
            spread[i] = torch.maximum(spread[i], gap.max() if gap.numel() else spread[i])
    return [x.item() for x in spread]


def _assert_same_values(x, r, o, dtype, label, spread=0.0, scale=0.0):
    """x (backend) against r (reference in the same dtype) and o (float64 oracle), element by element:
    identical NaN and Inf positions, values within the tolerances of test_backend_equivalence widened by
    the input-rounding spread of the drawn case (see _spread) and by 4 ulps of `scale`, the size of the
    intermediate terms (see assert_agrees_with_reference). That is the rounding a small gradient inherits
    from the terms it is formed from: e.g. with M = 1 every cosine similarity is ±1 up to less than a
    float32 ulp, and ∂L/∂key, exactly ~1e-12, comes out of β·∂L/∂(βK)·(M̂ - K·k̂)/|k| as ~1e-4 from the
    kernels and ~1e-17 from the reference's autograd (ill-conditioned draws of test_memory_step; each
    side is exact by luck elsewhere)."""
    where = lambda mask: mask.nonzero().tolist()[:6]  # noqa: E731
    nan_x, nan_r = torch.isnan(x), torch.isnan(r)
    assert torch.equal(nan_x, nan_r), (f"{label}: NaN at {where(nan_x & ~nan_r)} where the reference is not, "
                                       f"not NaN at {where(nan_r & ~nan_x)} where the reference is")
    inf_r = torch.isinf(r)
    assert torch.equal(torch.isinf(x), inf_r) and torch.equal(x[inf_r], r[inf_r]), (
        f"{label}: infinities {where(torch.isinf(x))} {x[torch.isinf(x)].tolist()[:6]}, "
        f"the reference's {where(inf_r)} {r[inf_r].tolist()[:6]}")
    finite = torch.isfinite(r) & torch.isfinite(o)
    x, r, o = x[finite].double(), r[finite].double(), o[finite]
    if x.numel() == 0:
        return
    if dtype == torch.float64:
        torch.testing.assert_close(x, o, rtol=1e-7, atol=1e-9 + 8 * spread + 4 * _EPS[dtype] * scale,
                                   msg=lambda m: f"{label} (input-rounding spread {spread:.2e}): {m}")
    else:
        ref_err = (r - o).abs().max().item()
        torch.testing.assert_close(
            x, o, rtol=1e-4, atol=1e-5 + 4 * ref_err + 8 * spread + 4 * _EPS[dtype] * scale,
            msg=lambda m: f"{label} (reference f32 error {ref_err:.2e}, input-rounding spread {spread:.2e}): {m}")


def assert_agrees_with_reference(op, inputs, dtype, backend):
    oracle = _attempt(op, _as(inputs, torch.float64), "reference")
    ref = oracle if dtype == torch.float64 else _attempt(op, _as(inputs, dtype), "reference")
    got = _attempt(op, _as(inputs, dtype), backend)
    if isinstance(ref, Exception):
        assert type(got) is type(ref), f"the reference raised {ref!r}, {backend} gave {got!r}"
        return
    if isinstance(got, Exception):
        raise AssertionError(f"{backend} raised where the reference computed") from got
    spread = iter(_spread(op, inputs, dtype, oracle))
    # Intermediate terms: up to the largest output or gradient, times β where ∂L/∂(βK) becomes ∂L/∂K.
    largest = lambda ts: max([t[torch.isfinite(t)].abs().max().item() for t in ts if torch.isfinite(t).any()],  # noqa: E731
                             default=0.0)
    betas = [t for name, t in _named(inputs) if name.endswith("beta")]
    scale = largest(oracle[0] + oracle[1]) * max(1.0, largest(betas))
    for part, index in (("output", 0), ("gradient", 1)):
        for i, (x, r, o) in enumerate(zip(got[index], ref[index], oracle[index])):
            _assert_same_values(x, r, o, dtype, f"{backend} {op} {part} {i}", next(spread), scale)


# --- the properties ---------------------------------------------------------------------------------------


@given(case=op_inputs("address"))
def test_address(backend, case):
    assert_agrees_with_reference("address", *case, backend)


@given(case=op_inputs("read"))
def test_read(backend, case):
    assert_agrees_with_reference("read", *case, backend)


@given(case=op_inputs("write"))
def test_write(backend, case):
    assert_agrees_with_reference("write", *case, backend)


@given(case=op_inputs("memory_step"))
def test_memory_step(backend, case):
    assert_agrees_with_reference("memory_step", *case, backend)


# --- the policy's fixed cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_extreme_parameters_up_to_the_dtype_range(backend, dtype):
    """β at the dtype's largest value, and γ as large as γ·ln N stays finite: the same finite weighting on
    every backend (and the gradients wherever the reference's are finite)."""
    B, N, M, H, S = 3, 9, 4, 2, 1
    largest = torch.finfo(dtype).max
    for beta, gamma in ((largest, None), (None, largest / (2 * math.log(N))), (1e30, 1e4)):
        inputs = cases.address_inputs(B, N, M, H, S, dtype=torch.float64)
        if beta is not None:
            inputs["beta"] = torch.full((B, H), beta, dtype=torch.float64)
        if gamma is not None:
            inputs["gamma"] = torch.full((B, H), gamma, dtype=torch.float64)
        got = run_op("address", _as(inputs, dtype), backend)
        ref = run_op("address", _as(inputs, dtype), "reference")
        assert torch.isfinite(got[0][0]).all(), f"beta={beta}, gamma={gamma}: {got[0][0]}"
        torch.testing.assert_close(got[0][0], ref[0][0], rtol=1e-4, atol=1e-6)
        for i, (x, r) in enumerate(zip(got[1], ref[1])):
            _assert_same_values(x, r, r.double(), torch.float64 if dtype == torch.float64 else torch.float32,
                                f"beta={beta}, gamma={gamma}, gradient {i}")


@pytest.mark.parametrize("arg", ["memory", "key", "beta", "gate", "shift", "gamma", "w_prev"])
@pytest.mark.parametrize("value", POISON, ids=["nan", "inf", "-inf"])
def test_non_finite_argument(backend, arg, value):
    """One non-finite element in an argument of address: NaN weights for the heads of that batch row it
    reaches, exactly where the reference has them (a NaN memory once gave uniform weights 1/N with triton).
    -Inf in a shift or a previous weighting (distributions: never negative when activated) makes w_s -Inf,
    which the sharpening's clamp max(w_s, tiny) absorbs like any value <= 0: finite, on every backend."""
    inputs = cases.address_inputs(2, 7, 3, 2, 1, dtype=torch.float64)
    inputs[arg] = inputs[arg].clone()
    inputs[arg][0].view(-1)[0] = value
    for dtype in DTYPES:
        w = ops.address(**_as(inputs, dtype), backend=backend)
        reference = ops.address(**_as(inputs, dtype), backend="reference")
        heads = slice(None) if arg == "memory" else 0  # memory feeds every head of row 0; the rest, head 0 only
        if value == -math.inf and arg in ("shift", "w_prev"):
            assert torch.isfinite(reference).all()
        else:
            assert torch.isnan(reference[0, heads]).all()
        assert torch.equal(torch.isnan(w), torch.isnan(reference)), f"{dtype}: {w}"
        finite = torch.isfinite(reference)
        torch.testing.assert_close(w[finite], reference[finite], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32], ids=["f16", "bf16", "int32"])
@pytest.mark.parametrize("op", ["address", "read", "write", "memory_step"])
def test_dtypes_run_or_name_the_argument_and_backends(backend, op, dtype):
    """A dtype a backend does not compute in is a TypeError naming the argument and the backends that take
    it (the extension once failed inside C++ naming neither); a supported one computes close to float32."""
    make = {"address": lambda: cases.address_inputs(2, 7, 3, 2, 1), "read": lambda: cases.read_inputs(2, 7, 3, 2),
            "write": lambda: cases.write_inputs(2, 7, 3, 2),
            "memory_step": lambda: cases.memory_step_inputs(2, 7, 3, 1, 2, 1)}[op]
    inputs = _as(make(), dtype)
    if not dtype.is_floating_point:
        with pytest.raises(TypeError, match=r"argument 'memory' must be a floating-point tensor \(float16, "
                                            r"bfloat16, float32 or float64\), got torch.int32"):
            getattr(ops, op)(**inputs, backend=backend)
        return
    if dtype not in BACKEND_DTYPES[backend]:
        name = str(dtype).replace("torch.", "")
        with pytest.raises(TypeError, match=rf"{op}: argument 'memory' is {dtype}, which backend '{backend}' does "
                                            rf"not support \(it takes float32 or float64\); {name} is supported by "
                                            r"backend='reference' or 'triton'"):
            getattr(ops, op)(**inputs, backend=backend)
        return
    got = run_op(op, inputs, backend)
    as_f32 = run_op(op, cases.rebuild(inputs, [t.float() for t in cases.flat_tensors(inputs)]), "reference")
    for x, r in zip(got[0] + got[1], as_f32[0] + as_f32[1]):
        assert x.dtype == dtype and torch.isfinite(x).all()
        torch.testing.assert_close(x.float(), r, rtol=0.1, atol=0.1 * r.abs().max().clamp_min(1.0).item())


def test_auto_runs_a_dtype_its_first_choice_lacks():
    """backend='auto' falls back to the reference for float16 where its first choice (cpp) lacks it."""
    inputs = _as(cases.address_inputs(2, 7, 3, 2, 1), torch.float16)
    w = ops.address(**inputs)
    assert w.dtype == torch.float16
    torch.testing.assert_close(w, ops.address(**inputs, backend="reference"))
