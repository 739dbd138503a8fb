"""What every kernel module shares: tile sizes, the compute dtype, scratch buffers and launch options.

Tiles. A program owns BLOCK_B batch rows and walks the N memory slots in tiles of BLOCK_N; a slot is
always loaded whole, padded to BLOCK_M = next power of two of M and masked (tl.arange needs powers of
two). One memory tile is [BLOCK_B, BLOCK_N, BLOCK_M] elements, at most `TILE_ELEMENTS` of them: on a GPU
that keeps a tile in registers without spilling (see GPU_TILE_ELEMENTS); under the interpreter, whose cost
is per operation and not per element, the budget is large so that a small test runs as few programs and
loop trips as possible.

Precision. Kernels load every input as DTYPE (float64 for float64 inputs, float32 otherwise: the
interpreter's bf16 arithmetic is wrong, and fp16/bf16 need fp32 accumulation anyway) and store outputs in
the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ntm_fast.ops.shared import triton_interpreted

# The GPU's tile and warps: 1024 elements over 8 warps, 4 per thread. Compiled for sm_90
# (benchmarks/compile_report.py), no kernel spills in float32 at the default sizes with triton 3.6 or 3.9, and
# the memory_step backward takes 80-123 registers; the earlier 4096 elements over 4 warps (32 per thread)
# took 228-255 registers per thread, the backward spilled, and 255 registers x 128 threads left room for
# only 2 programs (8 warps) per SM.
GPU_TILE_ELEMENTS = 1024
GPU_NUM_WARPS = 8
# Elements of one [BLOCK_B, BLOCK_N, BLOCK_M] memory tile (tests lower it to force N tiling).
TILE_ELEMENTS = 2**16 if triton_interpreted() else GPU_TILE_ELEMENTS


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def tiles(B: int, N: int, M: int) -> dict:
    """BLOCK_B, BLOCK_N, BLOCK_M (constexpr launch arguments) for a [B, N, M] memory."""
    block_m = pow2(M)
    block_n = min(pow2(N), max(1, TILE_ELEMENTS // block_m))
    block_b = min(pow2(B), max(1, TILE_ELEMENTS // (block_n * block_m)))
    return dict(BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_M=block_m)


def launch(memory: torch.Tensor):
    """(grid, keyword arguments) shared by every kernel over this [B, N, M] memory: sizes, the compute
    DTYPE, tile sizes and num_warps."""
    B, N, M = memory.shape
    blocks = tiles(B, N, M)
    dtype = tl.float64 if memory.dtype == torch.float64 else tl.float32
    return (triton.cdiv(B, blocks["BLOCK_B"]),), dict(B=B, N=N, M=M, DTYPE=dtype, num_warps=GPU_NUM_WARPS, **blocks)


def shift_args(N: int, S: int, tiny: float, eps: float) -> dict:
    """Addressing's extra launch arguments. TINY is the clamp of the sharpening log (reference.sharpen_floor
    of the *input* dtype) and EPS the smoothing of the cosine (reference.COSINE_EPS), both passed by the
    caller; WRAP is a multiple of N above 2S, added before `% N` so shifted slot indices stay non-negative."""
    return dict(S=S, WRAP=N * (2 * S // N + 1), TINY=tiny, EPS=eps)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def contiguous(*tensors):
    return [t.contiguous() for t in tensors]


def scratch(rows: int, B: int, N: int, like: torch.Tensor) -> torch.Tensor:
    """Per-call workspace of `rows` [B, N] vectors in the compute dtype (never saved for backward)."""
    return torch.empty((rows, B, N), dtype=compute_dtype(like.dtype), device=like.device)


# Correctly rounded float32 division and square root. On NVIDIA GPUs Triton's `/` is div.full.f32 (up to 2 ulp
# off) and tl.sqrt is sqrt.approx.f32; the reference's (PyTorch's) are IEEE. Eq 6's gradients are differences of
# nearly equal terms where a key and a memory row are (anti)parallel (|K| = 1): with IEEE arithmetic both
# vanish exactly, as in the reference, with the approximate ones they leave rounding noise that β = 1e3
# amplifies past the reference's error (benchmarks/results/gpu-h200.json). float64 is exact either way.
@triton.jit
def div(x, y, DTYPE: tl.constexpr):
    if DTYPE == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def sqrt(x, DTYPE: tl.constexpr):
    if DTYPE == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def load_head(ptr, rows, h, H, cols, B, C, DTYPE: tl.constexpr):
    """The [BLOCK_B, BLOCK_C] block of head h (of H) in a contiguous [B, H, C] tensor, zero padded, as DTYPE."""
    mask = (rows < B)[:, None] & (cols < C)[None, :]
    return tl.load(ptr + (rows * H + h)[:, None] * C + cols[None, :], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def store_head(ptr, value, rows, h, H, cols, B, C):
    mask = (rows < B)[:, None] & (cols < C)[None, :]
    tl.store(ptr + (rows * H + h)[:, None] * C + cols[None, :], value, mask=mask)


@triton.jit
def memory_offsets(rows, slots, cols, B, N, M):
    """Offsets and mask of the [BLOCK_B, BLOCK_N, BLOCK_M] tile of a contiguous [B, N, M] tensor."""
    offsets = (rows[:, None, None] * N + slots[None, :, None]) * M + cols[None, None, :]
    mask = (rows < B)[:, None, None] & (slots < N)[None, :, None] & (cols < M)[None, None, :]
    return offsets, mask


@triton.jit
def store_heads(ptr, acc, rows, B, H, C, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """Store acc [BLOCK_B, BLOCK_H, BLOCK_C] into the rows of a contiguous [B, H, C] tensor."""
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_C)
    offsets = (rows[:, None, None] * H + heads[None, :, None]) * C + cols[None, None, :]
    mask = (rows < B)[:, None, None] & (heads < H)[None, :, None] & (cols < C)[None, None, :]
    tl.store(ptr + offsets, acc, mask=mask)
