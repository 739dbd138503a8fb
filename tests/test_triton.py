"""The Triton backend beyond the shared equivalence suite: what it saves for backward, how many kernels it
launches, N and batch tiling, non-contiguous inputs, a whole NTM trained with it, and (GPU only) the
equivalence at large shapes and in fp16/bf16.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set in conftest.py), so shapes here are small.
"""
import importlib

import pytest
import torch

import cases
from ntm_fast import ops
from ntm_fast.ops.dispatch import import_kernels, unavailable_reason
from ntm_fast.ops.shared import poisoned_outputs
from test_backend_equivalence import DEVICE, assert_matches_reference, run_op

pytestmark = pytest.mark.skipif(unavailable_reason("triton", DEVICE) is not None,
                                reason=f"triton unavailable: {unavailable_reason('triton', DEVICE)}")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    return import_kernels()


def _leaves(inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in cases.flat_tensors(inputs)]
    return leaves, cases.rebuild(inputs, leaves)


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def saved_bytes(op, inputs, backend):
    """Bytes of the distinct storages autograd keeps for backward of one op call."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    leaves, call = _leaves(inputs)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = _outputs(getattr(ops, op)(**call, backend=backend))
    return sum(storages.values()), outs


@pytest.mark.parametrize("op, make", [
    ("address", lambda: cases.address_inputs(4, 33, 20, 2, 1, dtype=torch.float32, device=DEVICE)),
    ("memory_step", lambda: cases.memory_step_inputs(4, 33, 20, 1, 1, 1, dtype=torch.float32, device=DEVICE)),
    ("memory_step", lambda: cases.memory_step_inputs(3, 16, 8, 2, 3, 2, dtype=torch.float32, device=DEVICE)),
], ids=["address", "memory_step", "memory_step_R2W3"])
def test_saves_only_inputs_and_weightings(op, make):
    inputs = make()
    triton_bytes, outs = saved_bytes(op, inputs, "triton")
    reference_bytes, _ = saved_bytes(op, inputs, "reference")
    input_bytes = sum(t.numel() * t.element_size() for t in cases.flat_tensors(inputs))
    weighting_bytes = sum(o.numel() * o.element_size() for o in outs if o.shape[-1] == inputs["memory"].shape[1])
    assert triton_bytes <= input_bytes + weighting_bytes  # no [B,N,M] or [B,H,N] intermediates
    assert triton_bytes <= reference_bytes


@pytest.mark.parametrize("op, make", [
    ("address", lambda: cases.address_inputs(2, 7, 3, 2, 1, device=DEVICE)),
    ("read", lambda: cases.read_inputs(2, 7, 3, 2, device=DEVICE)),
    ("write", lambda: cases.write_inputs(2, 7, 3, 2, device=DEVICE)),
    ("memory_step", lambda: cases.memory_step_inputs(2, 7, 3, 2, 2, 1, device=DEVICE)),
], ids=["address", "read", "write", "memory_step"])
def test_one_launch_forward_one_backward(op, make, launches):
    leaves, call = _leaves(make())
    outs = _outputs(getattr(ops, op)(**call, backend="triton"))
    assert len(launches) == 1, launches
    sum(o.sum() for o in outs).backward()
    assert len(launches) == 2 and launches[1].endswith("_bwd_kernel"), launches


@pytest.mark.parametrize("op, make", [
    ("address", lambda dt: cases.address_inputs(5, 33, 3, 2, 2, "one_hot", dtype=dt, device=DEVICE)),
    ("read", lambda dt: cases.read_inputs(5, 33, 3, 2, dtype=dt, device=DEVICE)),
    ("write", lambda dt: cases.write_inputs(5, 33, 3, 2, "one_hot", dtype=dt, device=DEVICE)),
    ("memory_step", lambda dt: cases.memory_step_inputs(5, 33, 3, 1, 2, 2, dtype=dt, device=DEVICE)),
], ids=["address", "read", "write", "memory_step"])
def test_tiled_slots_and_batch(op, make, monkeypatch):
    # An 8-slot, 2-row tile budget: 5 slot tiles and 3 batch blocks, so the running softmaxes, the shift
    # across tile edges and the per-head accumulators all cross tiles.
    common = importlib.import_module("ntm_fast.kernels._common")
    monkeypatch.setattr(common, "TILE_ELEMENTS", 32)
    assert common.tiles(5, 33, 3) == dict(BLOCK_B=1, BLOCK_N=8, BLOCK_M=4)
    assert_matches_reference(op, make, torch.float64, "triton")


def test_non_contiguous_inputs_as_the_model_passes_them():
    # The model hands memory_step slices of one head-parameter tensor (read heads first), so the head
    # tensors are strided views; memory may be an expanded initial state.
    inputs = cases.memory_step_inputs(3, 9, 4, 2, 1, 1, device=DEVICE)
    R = 2

    def outputs_and_grads(backend):
        merged = [torch.cat([r, w], 1).requires_grad_(True) for r, w in zip(inputs["read_heads"], inputs["write_heads"])]
        erase_add = [t.clone().requires_grad_(True) for t in inputs["write_heads"][5:]]
        memory0 = inputs["memory"][:1].clone().requires_grad_(True)
        w_prev = torch.cat([inputs["w_read_prev"], inputs["w_write_prev"]], 1).requires_grad_(True)
        read_heads = ops.ReadHeads(*[t[:, :R] for t in merged])
        write_heads = ops.WriteHeads(*[t[:, R:] for t in merged], *erase_add)
        assert not read_heads.key.is_contiguous()
        outs = ops.memory_step(memory0.expand(3, -1, -1), read_heads, write_heads, w_prev[:, :R], w_prev[:, R:],
                               backend=backend)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=DEVICE).view_as(o)).sum() for o in outs)
        return list(outs) + list(torch.autograd.grad(loss, merged + erase_add + [memory0, w_prev]))

    for x, r in zip(outputs_and_grads("triton"), outputs_and_grads("reference")):
        torch.testing.assert_close(x, r, rtol=1e-7, atol=1e-9)


def test_ntm_trains_like_the_reference():
    """A small NTM, a few optimizer steps: the triton model's loss and parameters track the reference's
    step by step to float32 rounding."""
    from ntm_fast import NTM

    def make(backend):
        torch.manual_seed(0)
        return NTM(5, 4, controller_size=16, memory_slots=10, memory_width=6, read_heads=1, write_heads=1,
                   memory_init="learned", backend=backend).to(DEVICE)

    models = {b: make(b) for b in ("reference", "triton")}
    optims = {b: torch.optim.SGD(m.parameters(), lr=0.5) for b, m in models.items()}
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(4, 3, 5, generator=g).to(DEVICE)
        target = torch.randint(0, 2, (4, 3, 4), generator=g).float().to(DEVICE)
        losses = {}
        for b, model in models.items():
            optims[b].zero_grad()
            with poisoned_outputs():
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
            loss.backward()
            optims[b].step()
            losses[b] = loss.detach()
        torch.testing.assert_close(losses["triton"], losses["reference"], msg=lambda m: f"step {step}: {m}")
        for (name, p), q in zip(models["triton"].named_parameters(), models["reference"].parameters()):
            torch.testing.assert_close(p, q, msg=lambda m: f"step {step}, {name}: {m}")


# --- GPU only: large shapes and half precision -------------------------------------------------------

LARGE = [  # (B, N, M, R, W, S)
    (4096, 128, 20, 1, 1, 1),
    (1024, 1024, 20, 1, 1, 1),
    (64, 4096, 20, 2, 1, 1),
    (256, 4096, 33, 1, 2, 3),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["random", "extreme"])
@pytest.mark.parametrize("size", LARGE, ids=lambda s: "B{}N{}M{}R{}W{}S{}".format(*s))
def test_gpu_memory_step_large(size, kind, dtype):
    assert_matches_reference(
        "memory_step", lambda dt: cases.memory_step_inputs(*size, kind, dtype=dt, device="cuda"), dtype, "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(4096, 128, 20, 2, 1), (256, 4096, 20, 1, 1)], ids=lambda s: "B{}N{}M{}H{}S{}".format(*s))
def test_gpu_address_read_write_large(size):
    B, N, M, H, S = size
    assert_matches_reference(
        "address", lambda dt: cases.address_inputs(B, N, M, H, S, dtype=dt, device="cuda"), torch.float32, "triton")
    assert_matches_reference(
        "read", lambda dt: cases.read_inputs(B, N, M, H, dtype=dt, device="cuda"), torch.float32, "triton")
    assert_matches_reference(
        "write", lambda dt: cases.write_inputs(B, N, M, H, dtype=dt, device="cuda"), torch.float32, "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)], ids=["f16", "bf16"])
def test_gpu_half_precision_inputs(dtype, tol):
    """fp16/bf16 inputs, fp32 math inside: close to the float32 reference on the same rounded inputs."""
    inputs = cases.memory_step_inputs(512, 128, 20, 1, 1, 1, dtype=dtype, device="cuda")
    got = run_op("memory_step", inputs, "triton")
    as_f32 = cases.rebuild(inputs, [t.float() for t in cases.flat_tensors(inputs)])
    ref = run_op("memory_step", as_f32, "reference")
    for x, r in zip(got[0] + got[1], ref[0] + ref[1]):
        assert x.dtype == dtype and torch.isfinite(x).all()
        scale = r.abs().max().clamp_min(1.0)
        torch.testing.assert_close(x.float(), r, rtol=tol, atol=tol * scale)
