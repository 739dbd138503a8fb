"""A whole NTM sequence as one persistent Triton kernel forward and one backward (plain launchers).

Per-op kernels leave a training step launch-bound (about 30 launches forward and 70 backward per time step).
Here a program owns BLOCK_B batch rows and loops over the T time steps inside the kernel (T is a runtime
argument: no recompilation per sequence length). Each step, as NTMCell.forward computes it (ntm_fast/model/ntm.py):

    u = [x_t; r_{t-1}]                                                   (Section 2)
    LSTM (nn.LSTMCell's gate order i, f, g, o):
        gates = u W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh;  c = σ(f)·c_{t-1} + σ(i)·tanh(g);  h = σ(o)·tanh(c)
    or feedforward: h = tanh(u W_ihᵀ + b_ih)
    p = h W_headsᵀ + b_heads = [key H·M | β H | g H | s H·K | γ H | erase W·M | add W·M]  (read heads first)
    β = softplus, g = σ, s = softmax over K, γ = 1 + softplus, erase = σ, key and add linear (Section 3.3)
    every head addresses M_{t-1} (Eq 5-9), r_t = reads of M_{t-1} (Eq 2), M_t = erase/add write (Eq 3-4)
    y_t = [h; r_t] W_outᵀ + b_out                                         (logits)

Shapes: T steps, B batch, X input, C controller units, G = 4C (LSTM) or C gate columns, Y outputs, N slots,
M slot width, R read and W write heads (H = R + W), S shift range (K = 2S + 1), P = H·M + 3H + H·K + 2W·M.
The matrix products are `tl.dot` over [BLOCK_B, BLOCK_D] × [BLOCK_D, BLOCK_J] tiles with the weights
streamed from global memory (L2) each step: all gate tiles of W_hh do not fit in an SM's shared memory. Tiles,
warps and the float32 product precision are each kernel's KernelSettings (below). The
addressing, read and write are the per-op kernels' @triton.jit helpers (address.py, read_write.py). Every
phase of a step is a separate (noinline) function called from the time loop: inlined, the addresses of all
phases' tiles are loop-invariant and were hoisted out of the loop and held live across it, which spilled. The
memory lives in a per-call [B, N, M] buffer (each program touches only its rows), updated in place. h, c,
the reads and the weightings of a step are stored once, into the tensors saved for backward, and the next
step reads them back from there (L2 on a GPU): a matrix product needs whole rows that other threads of the
program computed, so they pass through memory between the phases of a step (separated by barriers).

Precision: float64 inputs compute in float64 (IEEE products). float32 computes in float32, its products with
`tl.dot(input_precision=...)` as each kernel's KernelSettings say: on a GPU the forward's in "tf32x3" (three
tf32 tensor-core products; on an H200 as close to the reference as IEEE, 1.3e-7, and 1.26× faster) and the
backward's in "ieee"; `dot_precision` (or NTM_FAST_DOT_PRECISION) sets both; GPUs before Ampere (compute
capability 8.0, the first with tf32) compute IEEE products whatever is asked. The interpreter computes a
tl.dot in float32 whatever the precision: the CPU tests bound IEEE, the CUDA tests the GPU's defaults.

Launchers (no autograd; ntm_fast/ops/autograd.py wraps them):

    sequence_forward(x, h0, c0, reads0, w_read0, w_write0, memory0,
                     W_ih, b_ih, W_hh, b_hh, W_heads, b_heads, W_out, b_out,
                     *, read_heads, write_heads, shift_range, checkpoint_every=None, dot_precision=None)
        -> (logits [T, B, Y], saved: SequenceSaved)
    x [T, B, X]; h0, c0 [B, C] (None for a feedforward controller, with W_hh and b_hh None too);
    reads0 [B, R·M]; w_read0 [B, R, N]; w_write0 [B, W, N]; memory0 [B, N, M]; weights as nn.LSTMCell /
    nn.Linear hold them: W_ih [G, X + R·M], b_ih [G], W_hh [G, C], b_hh [G], W_heads [P, C], b_heads [P],
    W_out [Y, C + R·M], b_out [Y]. M is memory0's last size. checkpoint_every: k (None: ceil(sqrt(T))).

    sequence_backward(saved, d_logits, W_ih, W_hh, W_heads, W_out)
        -> (d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0,
            dW_ih, db_ih, dW_hh, dW_heads, db_heads, dW_out, db_out)
    d_h0, d_c0 and dW_hh are None for a feedforward controller; db_hh equals db_ih (the same sum). The order
    is that of the C++ `sequence_backward` (csrc/ntm_cell.cpp).

Saved for backward (SequenceSaved), in the compute dtype, index 0 of each [T+1, ...] tensor the initial state:
    hs [T+1, B, C] (h_0 = h0, zeros for feedforward), cs [T+1, B, C] (LSTM only), gates [T, B, 4C] (LSTM
    pre-activations only), heads [T, B, P] (pre-activation head parameters), reads [T+1, B, R·M],
    w_read [T+1, B, R, N], w_write [T+1, B, W, N], content_read [T, B, R, N] and content_write [T, B, W, N]
    (every head's content weighting w_c, Eq 5: the backward's addressing reads it instead of walking the memory
    once more per head), checkpoints [ceil(T/k), B, N, M] (M_0, M_k, M_2k, ...), plus a reference to x.
    Nothing else: the backward recomputes each segment's memories from its checkpoint with the write alone (the
    saved weightings make re-addressing unnecessary) and the activations from the pre-activations.
Bytes held per sequence-step and batch row (elements × 4 in float32), LSTM: 6C + P + R·M + 2(R + W)·N + N·M/k
(feedforward: C + P + R·M + 2(R + W)·N + N·M/k). At the default model (C = 100, N = 128, M = 20, 1R + 1W,
S = 1, P = 92) that is 1,224 + 2,560/k elements: 4,896 + 10,240/k bytes, 15,136 at k = 1 and 7,456 at k = 4. The
reference's autograd keeps 34,281 bytes per step and row there (float32, T = 6, B = 8; the distinct storages
its saved tensors hold besides the parameters, measured with torch.autograd.graph.saved_tensors_hooks; the
test test_saved_bytes_per_step checks both sides). The backward holds min(k, T) recomputed memories of one
segment at a time besides.

Backward: one reverse-time kernel. It carries ∂L/∂M, ∂L/∂h, ∂L/∂c, ∂L/∂r and ∂L/∂w of every head from step to
step (in the buffers that end as the initial state's gradients), recomputes a segment's memories before
walking it backwards, and writes the per-step gradients of the controller pre-activations ([T, B, G]) and
of the head parameters ([T, B, P]); the weight gradients are then a few GEMMs over all T·B rows (torch
matmuls): no per-program atomics on weights.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ntm_fast.ops.shared import empty_output, triton_interpreted

from . import _common
from ._common import div, memory_offsets, pow2, shift_args, store_heads
from .address import address_head_bwd, address_head_fwd
from .read_write import read_bwd_tile, read_tile, write_bwd_tile, write_tile

DOT_PRECISIONS = ("ieee", "tf32", "tf32x3")


class KernelSettings(NamedTuple):
    """How one sequence kernel runs on a GPU. Each program walks its memory in [BLOCK_B, BLOCK_N, BLOCK_M]
    tiles of `memory` elements, the addressing's [B, N] vectors (w_c, w_g, w_s and their gradients) in
    [BLOCK_B, BLOCK_S] tiles of `slot` elements, and its matrix products `cols` output columns at a time, each
    a loop of [BLOCK_B, depth] × [depth, cols] `tl.dot`s in float32 `precision` ("ieee", "tf32" or "tf32x3";
    float64 is always IEEE), with `warps` warps. A time step is a chain of dependent trips through L2, so
    fewer, larger tiles help until their registers spill (benchmarks/compile_report.py reads registers and
    spills for sm_90 without a GPU; benchmarks/sequence_sweep.py times settings on one). `gates` (forward,
    LSTM controller): 1 walks [x; r] and h once per gate, 4 walks them once for all four gate products (each
    operand chunk loaded once, the four weight tiles side by side: a quarter of the dependent trips, more
    registers). `rows`: batch rows per program (BLOCK_B; a power of two up to 64): the grid is ⌈B / rows⌉
    programs, each a chain of time steps, so fewer rows put more SMs to work at small batches (an NVIDIA
    tensor core pads a product's rows below 16; each program's own work shrinks only in its memory passes)
    and more rows fewer waves of programs at large ones. `stages`: Triton's software pipelining of the loops
    (num_stages; 1 is none; at 2 or 3 Triton prefetches a product loop's next loads into shared memory)."""
    memory: int
    slot: int
    cols: int
    depth: int
    warps: int
    precision: str
    gates: int = 1
    rows: int = 16
    stages: int = 1


# The defaults: the fastest settings of benchmarks/sequence_sweep.py on an H200 (benchmarks/RESULTS.md,
# "Sequence kernels' settings"). The forward's products take the whole controller width in one column tile
# and tf32x3 (three tf32 tensor-core products, as close to the reference as IEEE there: 1.3e-7); the backward
# runs 16 warps over 4096-element memory tiles, 1.56× its 8-warp, 1024-element setting although it then
# spills (sm_90, float32: 128 registers; 248 bytes of stack under triton 3.6, 712 under 3.9), and IEEE
# products, which were faster than tf32x3 at its [16, 32] tiles. Under the interpreter (cost per operation, not per element)
# every tile is large.
if triton_interpreted():
    FORWARD_SETTINGS = BACKWARD_SETTINGS = KernelSettings(memory=2**16, slot=2**16, cols=128, depth=128, warps=8,
                                                          precision="ieee", gates=4)
else:
    FORWARD_SETTINGS = KernelSettings(memory=2048, slot=1024, cols=128, depth=16, warps=8, precision="tf32x3")
    BACKWARD_SETTINGS = KernelSettings(memory=4096, slot=1024, cols=32, depth=64, warps=16, precision="ieee")
SETTINGS_ENV = {"forward": "NTM_FAST_SEQUENCE_FORWARD", "backward": "NTM_FAST_SEQUENCE_BACKWARD"}


# The values each field of a KernelSettings takes (tiles: any power of two of at least 16).
SETTING_CHOICES = {"warps": (4, 8, 16), "precision": DOT_PRECISIONS, "gates": (1, 4),
                   "rows": (1, 2, 4, 8, 16, 32, 64), "stages": (1, 2, 3)}


def kernel_settings(kernel: str) -> KernelSettings:
    """The settings of the "forward" or "backward" kernel: FORWARD_SETTINGS / BACKWARD_SETTINGS with the fields
    that NTM_FAST_SEQUENCE_FORWARD / NTM_FAST_SEQUENCE_BACKWARD set, e.g. "memory=4096,cols=64,warps=16"
    (each field's values: SETTING_CHOICES, tiles powers of two of at least 16), and the precision
    NTM_FAST_DOT_PRECISION sets for both."""
    name = SETTINGS_ENV[kernel]
    settings = (FORWARD_SETTINGS if kernel == "forward" else BACKWARD_SETTINGS)._asdict()
    text = os.environ.get(name, "").strip()
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in settings:
            raise ValueError(f"{name}: unknown field {key!r} in {text!r}; expected fields "
                             f"{', '.join(settings)} (e.g. 'memory=2048,depth=64')")
        choice = value if key == "precision" else int(value) if value.isdigit() else None
        if key in SETTING_CHOICES and choice not in SETTING_CHOICES[key]:
            raise ValueError(f"{name}: {key} must be one of {', '.join(map(str, SETTING_CHOICES[key]))}, "
                             f"got {value!r}")
        if key not in SETTING_CHOICES and (choice is None or choice < 16 or choice & (choice - 1)):
            raise ValueError(f"{name}: {key} must be a power of two of at least 16, got {value!r}")
        settings[key] = choice
    if "NTM_FAST_DOT_PRECISION" in os.environ:
        choice = os.environ["NTM_FAST_DOT_PRECISION"]
        if choice not in DOT_PRECISIONS:
            raise ValueError(f"NTM_FAST_DOT_PRECISION must be one of {', '.join(DOT_PRECISIONS)}, got {choice!r}")
        settings["precision"] = choice
    return KernelSettings(**settings)


# ---------------------------------------------------------------------------------------------------------
# Elementwise functions as PyTorch computes them (libdevice is unavailable under the interpreter).

@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    """tanh with full relative precision near 0 (where (1 - e)/(1 + e) cancels): a series below |x| = 1e-3."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    small = a * (1.0 - a * a * (1.0 / 3.0 - a * a * (2.0 / 15.0)))
    return tl.where(x < 0, -1.0, 1.0) * tl.where(a < 1e-3, small, t)


@triton.jit
def _softplus(x):
    """F.softplus (β = 1, threshold 20): x above 20, else log1p(exp(x)) (log1p by Goldberg's correction)."""
    z = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + z
    log1p = tl.where(u == 1.0, z, tl.log(u) * (z / (u - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _softplus_grad(x):
    """d softplus / dx as PyTorch's backward takes it: 1 above the threshold, σ(x) below."""
    return tl.where(x > 20.0, 1.0, _sigmoid(x))


# ---------------------------------------------------------------------------------------------------------
# Matrix products and copies over a program's rows.

@triton.jit
def _dot_tile(acc, a, v_ptrs, v_mask, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ V for the operand block a and the weight tile V loaded from v_ptrs (zero where not v_mask)."""
    v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(DTYPE)
    return tl.dot(a, v, acc, input_precision=PRECISION, out_dtype=DTYPE)


@triton.jit
def _dot_acc(acc, a_ptr, a_stride, rows, B, D, w_ptr, w_stride_d, w_stride_j, cols, col_ok, DTYPE: tl.constexpr,
             PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """acc [BLOCK_B, BLOCK_J] + A[rows, :D] @ V[:D, cols], where A is row-major with row stride a_stride and
    V[d, j] = w_ptr[d·w_stride_d + j·w_stride_j] (so a weight [J, D] enters transposed with strides (1, D))."""
    row_ok = rows < B
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(a_ptr + rows[:, None] * a_stride + ds[None, :], mask=row_ok[:, None] & (ds < D)[None, :],
                    other=0.0).to(DTYPE)
        acc = _dot_tile(acc, a, w_ptr + ds[:, None] * w_stride_d + cols[None, :] * w_stride_j,
                        (ds < D)[:, None] & col_ok[None, :], DTYPE, PRECISION)
    return acc


@triton.jit
def _load_pair(a_ptr, DA, b_ptr, DB, rows, B, cols, DTYPE: tl.constexpr, WITH_A: tl.constexpr):
    """The [BLOCK_B, len(cols)] block of [A | A'] (row-major A [B, DA] and A' [B, DB] side by side, zero padded):
    [x_t; r_{t-1}] or [h; r_t] as one operand, so that a product over both walks DA + DB columns once rather
    than each padded to a tile of its own. Without WITH_A, A's columns are zeros (a_ptr is not read)."""
    row_ok = (rows < B)[:, None]
    in_a = (cols < DA)[None, :]
    from_a = 0.0
    if WITH_A:
        from_a = tl.load(a_ptr + rows[:, None] * DA + cols[None, :], mask=row_ok & in_a, other=0.0)
    from_b = tl.load(b_ptr + rows[:, None] * DB + (cols - DA)[None, :],
                     mask=row_ok & ~in_a & (cols < DA + DB)[None, :], other=0.0)
    return tl.where(in_a, from_a, from_b).to(DTYPE)


@triton.jit
def _store_pair(a_ptr, DA, b_ptr, DB, value, rows, B, cols):
    """Store value [BLOCK_B, len(cols)] into the side-by-side [A | A'] (as _load_pair reads it)."""
    row_ok = (rows < B)[:, None]
    in_a = (cols < DA)[None, :]
    tl.store(a_ptr + rows[:, None] * DA + cols[None, :], value, mask=row_ok & in_a)
    tl.store(b_ptr + rows[:, None] * DB + (cols - DA)[None, :], value,
             mask=row_ok & ~in_a & (cols < DA + DB)[None, :])


@triton.jit
def _dot_acc_pair(acc, a_ptr, DA, b_ptr, DB, rows, B, w_ptr, w_stride_d, w_stride_j, cols, col_ok,
                  DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr):
    """acc + [A | A'][rows, :DA+DB] @ V[:DA+DB, cols] (A, A' as _load_pair takes them, V as _dot_acc's)."""
    D = DA + DB
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = _load_pair(a_ptr, DA, b_ptr, DB, rows, B, ds, DTYPE, True)
        acc = _dot_tile(acc, a, w_ptr + ds[:, None] * w_stride_d + cols[None, :] * w_stride_j,
                        (ds < D)[:, None] & col_ok[None, :], DTYPE, PRECISION)
    return acc


@triton.jit
def _bias_tile(b_ptr, cols, col_ok, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """[BLOCK_B, BLOCK_J] tile holding the bias b[cols] in every row."""
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(DTYPE)
    return tl.zeros([BLOCK_B, BLOCK_J], DTYPE) + bias[None, :]


@triton.jit
def _copy_memory(src_ptr, dst_ptr, rows, B, N, M, DTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask, other=0.0).to(DTYPE), mask=mask)


@triton.jit
def _zero_rows(ptr, rows, B, width, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """ptr[rows, :width] = 0 for a row-major [B, width] tensor."""
    for j0 in range(0, width, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        mask = (rows < B)[:, None] & (cols < width)[None, :]
        tl.store(ptr + rows[:, None] * width + cols[None, :], tl.zeros([BLOCK_B, BLOCK_J], DTYPE), mask=mask)


# ---------------------------------------------------------------------------------------------------------
# Head parameters. The activated ones live in a [B, P]-sized scratch as the per-op helpers take them, one
# piece per kind and head group: rkey [B, R, M], wkey [B, W, M], rbeta [B, R], wbeta, rgate, wgate,
# rshift [B, R, K], wshift [B, W, K], rgamma, wgamma, erase [B, W, M], add [B, W, M].

@triton.jit
def _act_ptrs(base, B, R, W, M, K):
    rkey = base
    wkey = rkey + B * R * M
    rbeta = wkey + B * W * M
    wbeta = rbeta + B * R
    rgate = wbeta + B * W
    wgate = rgate + B * R
    rshift = wgate + B * W
    wshift = rshift + B * R * K
    rgamma = wshift + B * W * K
    wgamma = rgamma + B * R
    erase = wgamma + B * W
    add = erase + B * W * M
    return rkey, wkey, rbeta, wbeta, rgate, wgate, rshift, wshift, rgamma, wgamma, erase, add


@triton.jit
def _split_offsets(rows, cols, R, W, c):
    """Columns 0..H·c of one kind in p, split into the read piece [B, R·c] (cols < R·c) and the write piece
    [B, W·c]: (is_read, offsets into the read piece, offsets into the write piece). rows and cols broadcast."""
    return cols < R * c, rows * (R * c) + cols, rows * (W * c) + (cols - R * c)


@triton.jit
def _store_split(read_ptr, write_ptr, value, rows, cols, mask, R, W, c):
    is_read, off_read, off_write = _split_offsets(rows, cols, R, W, c)
    tl.store(read_ptr + off_read, value, mask=mask & is_read)
    tl.store(write_ptr + off_write, value, mask=mask & ~is_read)


@triton.jit
def _load_split(read_ptr, write_ptr, rows, cols, mask, R, W, c, DTYPE: tl.constexpr):
    is_read, off_read, off_write = _split_offsets(rows, cols, R, W, c)
    from_read = tl.load(read_ptr + off_read, mask=mask & is_read, other=0.0).to(DTYPE)
    from_write = tl.load(write_ptr + off_write, mask=mask & ~is_read, other=0.0).to(DTYPE)
    return tl.where(is_read, from_read, from_write)


@triton.jit
def _shift_tile(rows, B, H, K, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_B, BLOCK_H, BLOCK_K] view of the shift kind: broadcast rows, column h·K + k, mask, k < K."""
    heads = tl.arange(0, BLOCK_H)
    ks = tl.arange(0, BLOCK_K)
    cols = heads[None, :, None] * K + ks[None, None, :]
    k_ok = (ks < K)[None, None, :]
    mask = (rows < B)[:, None, None] & (heads < H)[None, :, None] & k_ok
    return rows[:, None, None], cols, mask, k_ok


@triton.jit(noinline=True)
def _head_activations(p_ptr, act_ptr, row0, B, R, W, M, K, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HM: tl.constexpr, BLOCK_WM: tl.constexpr):
    """Section 3.3's activations of one step's p [B, P] into the act scratch (layout above), for the rows
    row0 .. row0 + BLOCK_B."""
    rows = row0 + tl.arange(0, BLOCK_B)
    H = R + W
    P = H * M + 3 * H + H * K + 2 * W * M
    rkey, wkey, rbeta, wbeta, rgate, wgate, rshift, wshift, rgamma, wgamma, erase, add = _act_ptrs(
        act_ptr, B, R, W, M, K)
    row_ok = (rows < B)[:, None]
    prow = p_ptr + rows[:, None] * P
    r2 = rows[:, None]
    cols = tl.arange(0, BLOCK_HM)[None, :]
    mask = row_ok & (cols < H * M)
    _store_split(rkey, wkey, tl.load(prow + cols, mask=mask, other=0.0).to(DTYPE), r2, cols, mask, R, W, M)
    hs = tl.arange(0, BLOCK_H)[None, :]
    mask = row_ok & (hs < H)
    beta = _softplus(tl.load(prow + H * M + hs, mask=mask, other=0.0).to(DTYPE))
    _store_split(rbeta, wbeta, beta, r2, hs, mask, R, W, 1)
    gate = _sigmoid(tl.load(prow + H * M + H + hs, mask=mask, other=0.0).to(DTYPE))
    _store_split(rgate, wgate, gate, r2, hs, mask, R, W, 1)
    gamma = 1.0 + _softplus(tl.load(prow + H * M + 2 * H + H * K + hs, mask=mask, other=0.0).to(DTYPE))
    _store_split(rgamma, wgamma, gamma, r2, hs, mask, R, W, 1)
    # s = softmax over the K shifts of each head
    r3, cols3, mask3, k_ok = _shift_tile(rows, B, H, K, BLOCK_H, BLOCK_K)
    z = tl.load(p_ptr + r3 * P + H * M + 2 * H + cols3, mask=mask3, other=0.0).to(DTYPE)
    z = tl.where(k_ok, z, float("-inf"))
    e = tl.exp(z - tl.max(z, axis=2)[:, :, None])
    _store_split(rshift, wshift, div(e, tl.sum(e, axis=2)[:, :, None], DTYPE), r3, cols3, mask3, R, W, K)
    wm = tl.arange(0, BLOCK_WM)[None, :]
    mask = row_ok & (wm < W * M)
    e_pre = tl.load(prow + H * M + 3 * H + H * K + wm, mask=mask, other=0.0).to(DTYPE)
    tl.store(erase + r2 * (W * M) + wm, _sigmoid(e_pre), mask=mask)
    a = tl.load(prow + H * M + 3 * H + H * K + W * M + wm, mask=mask, other=0.0).to(DTYPE)
    tl.store(add + r2 * (W * M) + wm, a, mask=mask)


@triton.jit(noinline=True)
def _head_activations_bwd(p_ptr, act_ptr, gact_ptr, dp_ptr, row0, B, R, W, M, K, DTYPE: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_HM: tl.constexpr, BLOCK_WM: tl.constexpr):
    """∂L/∂p [B, P] of one step from the activated parameters' gradients (gact, laid out as act)."""
    rows = row0 + tl.arange(0, BLOCK_B)
    H = R + W
    P = H * M + 3 * H + H * K + 2 * W * M
    gkey, gwkey, gbeta, gwbeta, ggate, gwgate, gshift, gwshift, ggamma, gwgamma, gerase, gadd = _act_ptrs(
        gact_ptr, B, R, W, M, K)
    _, _, _, _, _, _, rshift, wshift, _, _, erase, _ = _act_ptrs(act_ptr, B, R, W, M, K)
    row_ok = (rows < B)[:, None]
    prow = p_ptr + rows[:, None] * P
    drow = dp_ptr + rows[:, None] * P
    r2 = rows[:, None]
    cols = tl.arange(0, BLOCK_HM)[None, :]
    mask = row_ok & (cols < H * M)
    tl.store(drow + cols, _load_split(gkey, gwkey, r2, cols, mask, R, W, M, DTYPE), mask=mask)
    hs = tl.arange(0, BLOCK_H)[None, :]
    mask = row_ok & (hs < H)
    off = H * M
    g_beta = _load_split(gbeta, gwbeta, r2, hs, mask, R, W, 1, DTYPE)
    tl.store(drow + off + hs, g_beta * _softplus_grad(tl.load(prow + off + hs, mask=mask, other=0.0).to(DTYPE)),
             mask=mask)
    off = H * M + H
    gate = _sigmoid(tl.load(prow + off + hs, mask=mask, other=0.0).to(DTYPE))
    tl.store(drow + off + hs, _load_split(ggate, gwgate, r2, hs, mask, R, W, 1, DTYPE) * gate * (1.0 - gate),
             mask=mask)
    off = H * M + 2 * H + H * K
    g_gamma = _load_split(ggamma, gwgamma, r2, hs, mask, R, W, 1, DTYPE)
    tl.store(drow + off + hs, g_gamma * _softplus_grad(tl.load(prow + off + hs, mask=mask, other=0.0).to(DTYPE)),
             mask=mask)
    # softmax backward: ∂L/∂z = s·(∂L/∂s - Σ_k s·∂L/∂s)
    r3, cols3, mask3, _ = _shift_tile(rows, B, H, K, BLOCK_H, BLOCK_K)
    s = _load_split(rshift, wshift, r3, cols3, mask3, R, W, K, DTYPE)
    g_s = _load_split(gshift, gwshift, r3, cols3, mask3, R, W, K, DTYPE)
    g_z = s * (g_s - tl.sum(s * g_s, axis=2)[:, :, None])
    tl.store(dp_ptr + r3 * P + H * M + 2 * H + cols3, g_z, mask=mask3)
    wm = tl.arange(0, BLOCK_WM)[None, :]
    mask = row_ok & (wm < W * M)
    off = H * M + 3 * H + H * K
    e = tl.load(erase + r2 * (W * M) + wm, mask=mask, other=0.0).to(DTYPE)
    tl.store(drow + off + wm, tl.load(gerase + r2 * (W * M) + wm, mask=mask, other=0.0) * e * (1.0 - e), mask=mask)
    tl.store(drow + off + W * M + wm, tl.load(gadd + r2 * (W * M) + wm, mask=mask, other=0.0), mask=mask)


# ---------------------------------------------------------------------------------------------------------
# The controller.

@triton.jit
def _controller_preact(x_ptr, r_ptr, h_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X, RM, C, wcols, col_ok,
                       LSTM: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pre-activations of weight rows wcols: [x; r] W_ih[wcols]ᵀ + b_ih (+ h W_hh[wcols]ᵀ + b_hh for an LSTM)."""
    U = X + RM
    acc = _bias_tile(bih_ptr, wcols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
    acc = _dot_acc_pair(acc, x_ptr, X, r_ptr, RM, rows, B, wih_ptr, 1, U, wcols, col_ok, DTYPE, PRECISION, BLOCK_D)
    if LSTM:
        acc += _bias_tile(bhh_ptr, wcols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
        acc = _dot_acc(acc, h_ptr, C, rows, B, C, whh_ptr, 1, C, wcols, col_ok, DTYPE, PRECISION, BLOCK_B, BLOCK_D)
    return acc


@triton.jit
def _gate_bias(bih_ptr, bhh_ptr, gate, C, cols, col_ok, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_J: tl.constexpr):
    """b_ih + b_hh of one LSTM gate's columns cols, in every row: [BLOCK_B, BLOCK_J]."""
    return (_bias_tile(bih_ptr, gate * C + cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
            + _bias_tile(bhh_ptr, gate * C + cols, col_ok, DTYPE, BLOCK_B, BLOCK_J))


@triton.jit
def _gate_dots(acc_i, acc_f, acc_g, acc_o, a, w, w_ok, gate_stride, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """The four gates' accumulators plus a @ (their weight tiles, gate i's at w, each next gate_stride on)."""
    return (_dot_tile(acc_i, a, w, w_ok, DTYPE, PRECISION),
            _dot_tile(acc_f, a, w + gate_stride, w_ok, DTYPE, PRECISION),
            _dot_tile(acc_g, a, w + 2 * gate_stride, w_ok, DTYPE, PRECISION),
            _dot_tile(acc_o, a, w + 3 * gate_stride, w_ok, DTYPE, PRECISION))


@triton.jit
def _lstm_preacts(x_ptr, r_ptr, h_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X, RM, C, cols, col_ok,
                  DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """The LSTM's gate pre-activations i, f, g, o of columns cols: b_ih + b_hh + [x; r] W_ih[gate·C + cols]ᵀ +
    h W_hh[gate·C + cols]ᵀ, each [BLOCK_B, BLOCK_J]. One walk over [x; r] and one over h: each operand chunk
    is loaded once and feeds the four gates' products, whose weight tiles load side by side."""
    U = X + RM
    row_ok = rows < B
    acc_i = _gate_bias(bih_ptr, bhh_ptr, 0, C, cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
    acc_f = _gate_bias(bih_ptr, bhh_ptr, 1, C, cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
    acc_g = _gate_bias(bih_ptr, bhh_ptr, 2, C, cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
    acc_o = _gate_bias(bih_ptr, bhh_ptr, 3, C, cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
    for d0 in range(0, U, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = _load_pair(x_ptr, X, r_ptr, RM, rows, B, ds, DTYPE, True)
        w = wih_ptr + ds[:, None] + cols[None, :] * U  # W_ih[cols, ds]ᵀ of gate i
        acc_i, acc_f, acc_g, acc_o = _gate_dots(acc_i, acc_f, acc_g, acc_o, a, w,
                                                (ds < U)[:, None] & col_ok[None, :], C * U, DTYPE, PRECISION)
    for d0 in range(0, C, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(h_ptr + rows[:, None] * C + ds[None, :], mask=row_ok[:, None] & (ds < C)[None, :],
                    other=0.0).to(DTYPE)
        w = whh_ptr + ds[:, None] + cols[None, :] * C  # W_hh[cols, ds]ᵀ of gate i
        acc_i, acc_f, acc_g, acc_o = _gate_dots(acc_i, acc_f, acc_g, acc_o, a, w,
                                                (ds < C)[:, None] & col_ok[None, :], C * C, DTYPE, PRECISION)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit(noinline=True)
def _controller_fwd(x_ptr, r_ptr, h_prev_ptr, c_prev_ptr, h_ptr, c_ptr, gates_ptr, wih_ptr, bih_ptr, whh_ptr,
                    bhh_ptr, row0, B, X, RM, C, LSTM: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, GATES: tl.constexpr):
    """One controller step over column tiles of C: h (and c, and the LSTM's 4 gate pre-activations) stored.
    An LSTM's gate products walk their operands once per gate (GATES = 1) or once for all four (GATES = 4)."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        col_ok = cols < C
        mask = (rows < B)[:, None] & col_ok[None, :]
        offs = rows[:, None] * C + cols[None, :]
        if LSTM:
            if GATES == 4:
                pre_i, pre_f, pre_g, pre_o = _lstm_preacts(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr,
                                                           bhh_ptr, rows, B, X, RM, C, cols, col_ok, DTYPE, PRECISION,
                                                           BLOCK_B, BLOCK_J, BLOCK_D)
            else:
                pre_i = _controller_preact(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X,
                                           RM, C, cols, col_ok, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
                pre_f = _controller_preact(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X,
                                           RM, C, C + cols, col_ok, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
                pre_g = _controller_preact(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X,
                                           RM, C, 2 * C + cols, col_ok, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J,
                                           BLOCK_D)
                pre_o = _controller_preact(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X,
                                           RM, C, 3 * C + cols, col_ok, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J,
                                           BLOCK_D)
            g_offs = rows[:, None] * (4 * C) + cols[None, :]
            tl.store(gates_ptr + g_offs, pre_i, mask=mask)
            tl.store(gates_ptr + g_offs + C, pre_f, mask=mask)
            tl.store(gates_ptr + g_offs + 2 * C, pre_g, mask=mask)
            tl.store(gates_ptr + g_offs + 3 * C, pre_o, mask=mask)
            c_prev = tl.load(c_prev_ptr + offs, mask=mask, other=0.0).to(DTYPE)
            c = _sigmoid(pre_f) * c_prev + _sigmoid(pre_i) * _tanh(pre_g)
            tl.store(c_ptr + offs, c, mask=mask)
            tl.store(h_ptr + offs, _sigmoid(pre_o) * _tanh(c), mask=mask)
        else:
            pre = _controller_preact(x_ptr, r_ptr, h_prev_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, rows, B, X, RM, C,
                                     cols, col_ok, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
            tl.store(h_ptr + offs, _tanh(pre), mask=mask)


@triton.jit(noinline=True)
def _controller_bwd(dh_ptr, dc_ptr, h_ptr, c_prev_ptr, c_ptr, gates_ptr, dgates_ptr, row0, B, C, LSTM: tl.constexpr,
                    DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr):
    """∂L/∂(gate pre-activations) [B, G] from ∂L/∂h (dh_ptr) and the carried ∂L/∂c (dc_ptr, replaced in place by
    ∂L/∂c_{t-1} = ∂L/∂c·σ(f))."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, C, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        mask = (rows < B)[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        d_h = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        if LSTM:
            g_offs = rows[:, None] * (4 * C) + cols[None, :]
            i = _sigmoid(tl.load(gates_ptr + g_offs, mask=mask, other=0.0).to(DTYPE))
            f = _sigmoid(tl.load(gates_ptr + g_offs + C, mask=mask, other=0.0).to(DTYPE))
            g = _tanh(tl.load(gates_ptr + g_offs + 2 * C, mask=mask, other=0.0).to(DTYPE))
            o = _sigmoid(tl.load(gates_ptr + g_offs + 3 * C, mask=mask, other=0.0).to(DTYPE))
            tanh_c = _tanh(tl.load(c_ptr + offs, mask=mask, other=0.0).to(DTYPE))
            c_prev = tl.load(c_prev_ptr + offs, mask=mask, other=0.0).to(DTYPE)
            d_c = tl.load(dc_ptr + offs, mask=mask, other=0.0).to(DTYPE) + d_h * o * (1.0 - tanh_c * tanh_c)
            tl.store(dgates_ptr + g_offs, d_c * g * i * (1.0 - i), mask=mask)
            tl.store(dgates_ptr + g_offs + C, d_c * c_prev * f * (1.0 - f), mask=mask)
            tl.store(dgates_ptr + g_offs + 2 * C, d_c * i * (1.0 - g * g), mask=mask)
            tl.store(dgates_ptr + g_offs + 3 * C, d_h * tanh_c * o * (1.0 - o), mask=mask)
            tl.store(dc_ptr + offs, d_c * f, mask=mask)
        else:
            h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(DTYPE)
            tl.store(dgates_ptr + offs, d_h * (1.0 - h * h), mask=mask)


# ---------------------------------------------------------------------------------------------------------
# The memory interaction of one step (as memory_step.py's kernels, for the program's rows).

@triton.jit(noinline=True)
def _address_fwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, tmp_ptr, h, H,
                 row0, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """address_head_fwd of head h as a function of its own (why: the comment above _head_params)."""
    address_head_fwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, tmp_ptr,
                     h, H, row0 + tl.arange(0, BLOCK_B), B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M,
                     BLOCK_S, True)


@triton.jit(noinline=True)
def _address_bwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, gw_ptr,
                 gmem_ptr, gkey_ptr, gbeta_ptr, ggate_ptr, gshift_ptr, ggamma_ptr, tmp_ptr, h, H, row0, B, N, M, S, WRAP,
                 TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    """address_head_bwd of head h, accumulating into gmem, with ∂L/∂w_prev replacing gw in place; its content
    weighting read from wc_ptr, as the forward saved it."""
    address_head_bwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, gw_ptr,
                     gmem_ptr, gkey_ptr, gbeta_ptr, ggate_ptr, gshift_ptr, ggamma_ptr, gw_ptr, tmp_ptr, h, H,
                     row0 + tl.arange(0, BLOCK_B), True, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M,
                     BLOCK_S, BLOCK_K, True)


@triton.jit(noinline=True)
def _read_write_bwd(mem_ptr, rw_ptr, ww_ptr, erase, add, greads_ptr, gmem_ptr, grw_ptr, gww_ptr, gerase, gadd, row0,
                    B, N, M, R, W, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """Read and write backward: ∂L/∂M_{t-1} of both into gmem (holding ∂L/∂M_t), ∂L/∂e and ∂L/∂a, and the
    total ∂L/∂w of each head (upstream + read/write) into grw/gww for the addressing backward."""
    rows = row0 + tl.arange(0, BLOCK_B)
    g_erase = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    g_add = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_new = tl.load(gmem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_mem_read = read_bwd_tile(mem, rw_ptr, greads_ptr, grw_ptr, grw_ptr, rows, slots, R, B, N, M, True, DTYPE,
                                   BLOCK_B, BLOCK_N, BLOCK_M)
        g_mem_write, g_erase, g_add = write_bwd_tile(mem, g_new, ww_ptr, erase, add, gww_ptr, gww_ptr, g_erase,
                                                     g_add, rows, slots, W, B, N, M, True, DTYPE, BLOCK_B, BLOCK_N,
                                                     BLOCK_M, BLOCK_W)
        tl.store(gmem_ptr + offsets, g_mem_read + g_mem_write, mask=mask)
    store_heads(gerase, g_erase, rows, B, W, M, BLOCK_W, BLOCK_M)
    store_heads(gadd, g_add, rows, B, W, M, BLOCK_W, BLOCK_M)


@triton.jit(noinline=True)
def _memory_fwd(mem_ptr, act_ptr, rprev_ptr, wprev_ptr, rw_ptr, ww_ptr, rwc_ptr, wwc_ptr, reads_ptr, tmp_ptr, row0, B,
                N, M, R, W, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr):
    """Every head addresses M_{t-1} (Eq 5-9; its content weighting kept in rwc/wwc), the reads (Eq 2), then M_t
    (Eq 3-4) replaces M_{t-1} in place."""
    rows = row0 + tl.arange(0, BLOCK_B)
    K = 2 * S + 1
    rkey, wkey, rbeta, wbeta, rgate, wgate, rshift, wshift, rgamma, wgamma, erase, add = _act_ptrs(
        act_ptr, B, R, W, M, K)
    for h in range(R):
        _address_fwd(mem_ptr, rkey, rbeta, rgate, rshift, rgamma, rprev_ptr, rw_ptr, rwc_ptr, tmp_ptr, h, R, row0, B, N,
                     M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S)
    for h in range(W):
        _address_fwd(mem_ptr, wkey, wbeta, wgate, wshift, wgamma, wprev_ptr, ww_ptr, wwc_ptr, tmp_ptr, h, W, row0, B, N,
                     M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S)
    tl.debug_barrier()  # the weightings are complete
    reads = tl.zeros([BLOCK_B, BLOCK_R, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        reads = read_tile(reads, mem, rw_ptr, rows, slots, R, B, N, DTYPE, BLOCK_R)
        new = write_tile(mem, ww_ptr, erase, add, rows, slots, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        tl.store(mem_ptr + offsets, new, mask=mask)  # each element is loaded and stored by the same thread
    store_heads(reads_ptr, reads, rows, B, R, M, BLOCK_R, BLOCK_M)


@triton.jit(noinline=True)
def _memory_bwd(mem_ptr, act_ptr, gact_ptr, rprev_ptr, wprev_ptr, rw_ptr, ww_ptr, rwc_ptr, wwc_ptr, greads_ptr,
                gmem_ptr, grw_ptr, gww_ptr, tmp_ptr, row0, B, N, M, R, W, S, WRAP, TINY: tl.constexpr,
                EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """Backward of _memory_fwd, in place: gmem holds ∂L/∂M_t and leaves with ∂L/∂M_{t-1}; grw/gww hold ∂L/∂w_t
    (read/write heads) and leave with ∂L/∂w_{t-1}; the activated parameters' gradients go to gact."""
    K = 2 * S + 1
    rkey, wkey, rbeta, wbeta, rgate, wgate, rshift, wshift, rgamma, wgamma, erase, add = _act_ptrs(
        act_ptr, B, R, W, M, K)
    grkey, gwkey, grbeta, gwbeta, grgate, gwgate, grshift, gwshift, grgamma, gwgamma, gerase, gadd = _act_ptrs(
        gact_ptr, B, R, W, M, K)
    _read_write_bwd(mem_ptr, rw_ptr, ww_ptr, erase, add, greads_ptr, gmem_ptr, grw_ptr, gww_ptr, gerase, gadd, row0,
                    B, N, M, R, W, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_W)
    # Addressing backward of every head, each adding its part of ∂L/∂M_{t-1}.
    for h in range(R):
        _address_bwd(mem_ptr, rkey, rbeta, rgate, rshift, rgamma, rprev_ptr, rw_ptr, rwc_ptr, grw_ptr, gmem_ptr, grkey,
                     grbeta, grgate, grshift, grgamma, tmp_ptr, h, R, row0, B, N, M, S, WRAP, TINY, EPS, DTYPE,
                     BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S, BLOCK_K)
    for h in range(W):
        _address_bwd(mem_ptr, wkey, wbeta, wgate, wshift, wgamma, wprev_ptr, ww_ptr, wwc_ptr, gww_ptr, gmem_ptr, gwkey,
                     gwbeta, gwgate, gwshift, gwgamma, tmp_ptr, h, W, row0, B, N, M, S, WRAP, TINY, EPS, DTYPE,
                     BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S, BLOCK_K)


# ---------------------------------------------------------------------------------------------------------
# The phases of a step that the kernels' loops call. Each (but _head_params) is a function of its own
# (noinline), taking the program's first batch row row0 (such functions take scalars only): compiled inline into
# the time loop, the addresses of every phase's tiles and shared-memory layout conversions are loop-invariant,
# so the compiler hoisted them all out of the loop and kept them live across it (hundreds of registers: at the
# default sizes in float32 the forward spilled 296 bytes per thread and the backward 2,472).


@triton.jit
def _head_params(p_ptr, h_ptr, whd_ptr, bhd_ptr, row0, B, C, P, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """p = h W_headsᵀ + b_heads [B, P]. Inlined: as a function of its own it left triton 3.6's forward (whose
    ptxas holds a kernel with calls to 128 registers) with more registers saved around the calls."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, P, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        acc = _dot_acc(_bias_tile(bhd_ptr, cols, cols < P, DTYPE, BLOCK_B, BLOCK_J), h_ptr, C, rows, B, C,
                       whd_ptr, 1, C, cols, cols < P, DTYPE, PRECISION, BLOCK_B, BLOCK_D)
        tl.store(p_ptr + rows[:, None] * P + cols[None, :], acc, mask=(rows < B)[:, None] & (cols < P)[None, :])


@triton.jit(noinline=True)
def _logits(y_ptr, h_ptr, r_ptr, wout_ptr, bout_ptr, row0, B, C, RM, Y, DTYPE: tl.constexpr,
            PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Logits y_t = [h; r_t] W_outᵀ + b_out [B, Y]."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, Y, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        col_ok = cols < Y
        acc = _bias_tile(bout_ptr, cols, col_ok, DTYPE, BLOCK_B, BLOCK_J)
        acc = _dot_acc_pair(acc, h_ptr, C, r_ptr, RM, rows, B, wout_ptr, 1, C + RM, cols, col_ok, DTYPE, PRECISION,
                            BLOCK_D)
        tl.store(y_ptr + rows[:, None] * Y + cols[None, :], acc, mask=(rows < B)[:, None] & col_ok[None, :])


@triton.jit(noinline=True)
def _write_step(mem_ptr, ww_ptr, erase_ptr, add_ptr, row0, B, N, M, W, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """The next memory of a segment (Eq 3-4): mem_ptr[B·N·M + ...] = write(mem_ptr[...])."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        new = write_tile(mem, ww_ptr, erase_ptr, add_ptr, rows, slots, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        tl.store(mem_ptr + B * N * M + offsets, new, mask=mask)


@triton.jit(noinline=True)
def _output_bwd(dy_ptr, wout_ptr, dh_carried_ptr, dr_carried_ptr, dh_ptr, dreads_ptr, row0, B, C, RM, Y,
                LSTM: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """∂L/∂h = ∂L/∂y W_out[:, :C] (+ the carried ∂L/∂h for an LSTM) into dh [B, C] and ∂L/∂r_t = ∂L/∂y
    W_out[:, C:] + the carried ∂L/∂r into dreads [B, R·M]."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, C + RM, BLOCK_J):  # the columns of [h; r_t]
        cols = j0 + tl.arange(0, BLOCK_J)
        # a feedforward controller carries no ∂L/∂h (dh_carried_ptr is a stand-in, not read)
        acc = _load_pair(dh_carried_ptr, C, dr_carried_ptr, RM, rows, B, cols, DTYPE, LSTM)
        acc = _dot_acc(acc, dy_ptr, Y, rows, B, Y, wout_ptr, C + RM, 1, cols, cols < C + RM, DTYPE, PRECISION,
                       BLOCK_B, BLOCK_D)
        _store_pair(dh_ptr, C, dreads_ptr, RM, acc, rows, B, cols)


@triton.jit(noinline=True)
def _add_rows_matmul(out_ptr, J, a_ptr, D, w_ptr, w_stride, row0, B, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[rows, :J] += A[rows, :D] V[:D, :J] for row-major out [B, J], A [B, D] and weight V [D, w_stride]."""
    rows = row0 + tl.arange(0, BLOCK_B)
    for j0 in range(0, J, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        mask = (rows < B)[:, None] & (cols < J)[None, :]
        offs = rows[:, None] * J + cols[None, :]
        acc = tl.load(out_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        acc = _dot_acc(acc, a_ptr, D, rows, B, D, w_ptr, w_stride, 1, cols, cols < J, DTYPE, PRECISION, BLOCK_B,
                       BLOCK_D)
        tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit(noinline=True)
def _inputs_bwd(dg_ptr, wih_ptr, whh_ptr, dx_ptr, dr_ptr, dh_ptr, row0, B, X, RM, C, G, LSTM: tl.constexpr,
                DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """∂L/∂u = ∂L/∂gates W_ih -> ∂L/∂x_t into dx [B, X] and ∂L/∂r_{t-1} into dr [B, R·M]; for an LSTM
    ∂L/∂h_{t-1} = ∂L/∂gates W_hh into dh [B, C]."""
    rows = row0 + tl.arange(0, BLOCK_B)
    U = X + RM
    for j0 in range(0, U, BLOCK_J):  # the columns of u = [x_t; r_{t-1}]
        cols = j0 + tl.arange(0, BLOCK_J)
        acc = _dot_acc(tl.zeros([BLOCK_B, BLOCK_J], DTYPE), dg_ptr, G, rows, B, G, wih_ptr, U, 1, cols, cols < U,
                       DTYPE, PRECISION, BLOCK_B, BLOCK_D)
        _store_pair(dx_ptr, X, dr_ptr, RM, acc, rows, B, cols)
    if LSTM:
        for j0 in range(0, C, BLOCK_J):
            cols = j0 + tl.arange(0, BLOCK_J)
            acc = _dot_acc(tl.zeros([BLOCK_B, BLOCK_J], DTYPE), dg_ptr, G, rows, B, G, whh_ptr, C, 1, cols,
                           cols < C, DTYPE, PRECISION, BLOCK_B, BLOCK_D)
            tl.store(dh_ptr + rows[:, None] * C + cols[None, :], acc, mask=(rows < B)[:, None] & (cols < C)[None, :])


# ---------------------------------------------------------------------------------------------------------
# The kernels.

@triton.jit
def _sequence_fwd_kernel(x_ptr, wih_ptr, bih_ptr, whh_ptr, bhh_ptr, whd_ptr, bhd_ptr, wout_ptr, bout_ptr,
                         logits_ptr, hs_ptr, cs_ptr, gates_ptr, p_ptr, reads_ptr, wr_ptr, ww_ptr, wcr_ptr, wcw_ptr,
                         ckpt_ptr, mem_ptr, act_ptr, tmp_ptr,
                         T, CK, B, X, C, Y, N, M, R, W, S, WRAP,
                         LSTM: tl.constexpr, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_HM: tl.constexpr, BLOCK_WM: tl.constexpr, GATES: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B  # the program's first batch row
    rows = row0 + tl.arange(0, BLOCK_B)
    H = R + W
    K = 2 * S + 1
    RM = R * M
    P = H * M + 3 * H + H * K + 2 * W * M
    G = 4 * C if LSTM else C
    for t in range(T):
        step = tl.cast(t, tl.int64)
        if t % CK == 0:  # checkpoint M_t for the backward's recomputation
            _copy_memory(mem_ptr, ckpt_ptr + (step // CK) * B * N * M, rows, B, N, M, DTYPE, BLOCK_N, BLOCK_M)
        h_ptr = hs_ptr + (step + 1) * B * C
        r_ptr = reads_ptr + (step + 1) * B * RM
        _controller_fwd(x_ptr + step * B * X, r_ptr - B * RM, h_ptr - B * C, cs_ptr + step * B * C,
                        h_ptr, cs_ptr + (step + 1) * B * C, gates_ptr + step * B * G, wih_ptr, bih_ptr, whh_ptr,
                        bhh_ptr, row0, B, X, RM, C, LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D, GATES)
        tl.debug_barrier()
        # Head parameters p = h W_headsᵀ + b_heads, then their activations.
        p_t = p_ptr + step * B * P
        _head_params(p_t, h_ptr, whd_ptr, bhd_ptr, row0, B, C, P, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
        tl.debug_barrier()
        _head_activations(p_t, act_ptr, row0, B, R, W, M, K, DTYPE, BLOCK_B, BLOCK_H, BLOCK_K, BLOCK_HM, BLOCK_WM)
        tl.debug_barrier()
        wr_t = wr_ptr + step * B * R * N
        ww_t = ww_ptr + step * B * W * N
        _memory_fwd(mem_ptr, act_ptr, wr_t, ww_t, wr_t + B * R * N, ww_t + B * W * N, wcr_ptr + step * B * R * N,
                    wcw_ptr + step * B * W * N, r_ptr, tmp_ptr, row0, B, N, M, R, W, S, WRAP, TINY, EPS, DTYPE, BLOCK_B,
                    BLOCK_N, BLOCK_M, BLOCK_S, BLOCK_R)
        tl.debug_barrier()
        _logits(logits_ptr + step * B * Y, h_ptr, r_ptr, wout_ptr, bout_ptr, row0, B, C, RM, Y, DTYPE, PRECISION,
                BLOCK_B, BLOCK_J, BLOCK_D)
        tl.debug_barrier()


@triton.jit
def _sequence_bwd_kernel(dlogits_ptr, wih_ptr, whh_ptr, whd_ptr, wout_ptr,
                         hs_ptr, cs_ptr, gates_ptr, p_ptr, wr_ptr, ww_ptr, wcr_ptr, wcw_ptr, ckpt_ptr,
                         dx_ptr, dh0_ptr, dc0_ptr, dr0_ptr, dwr0_ptr, dww0_ptr, dm0_ptr, dgates_ptr, dp_ptr,
                         seg_ptr, act_ptr, gact_ptr, dh_ptr, dreads_ptr, tmp_ptr,
                         T, CK, B, X, C, Y, N, M, R, W, S, WRAP,
                         LSTM: tl.constexpr, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_W: tl.constexpr,
                         BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                         BLOCK_HM: tl.constexpr, BLOCK_WM: tl.constexpr):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B  # the program's first batch row
    rows = row0 + tl.arange(0, BLOCK_B)
    H = R + W
    K = 2 * S + 1
    RM = R * M
    P = H * M + 3 * H + H * K + 2 * W * M
    G = 4 * C if LSTM else C
    BNM = B * N * M
    _, _, _, _, _, _, _, _, _, _, erase, add = _act_ptrs(act_ptr, B, R, W, M, K)
    # The carried gradients start at zero: ∂L/∂M_T, ∂L/∂w_T, ∂L/∂h_T, ∂L/∂c_T, ∂L/∂r_T.
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        tl.store(dm0_ptr + offsets, tl.zeros([BLOCK_B, BLOCK_N, BLOCK_M], DTYPE), mask=mask)
    _zero_rows(dwr0_ptr, rows, B, R * N, DTYPE, BLOCK_B, BLOCK_J)
    _zero_rows(dww0_ptr, rows, B, W * N, DTYPE, BLOCK_B, BLOCK_J)
    _zero_rows(dr0_ptr, rows, B, RM, DTYPE, BLOCK_B, BLOCK_J)
    if LSTM:
        _zero_rows(dh0_ptr, rows, B, C, DTYPE, BLOCK_B, BLOCK_J)
        _zero_rows(dc0_ptr, rows, B, C, DTYPE, BLOCK_B, BLOCK_J)
    tl.debug_barrier()
    num_segments = (T + CK - 1) // CK
    for i in range(num_segments):
        segment = num_segments - 1 - i
        t0 = segment * CK
        t1 = t0 + CK
        if t1 > T:
            t1 = T
        # Recompute M_{t0} .. M_{t1-1} from the checkpoint: the write alone, with the saved weightings.
        _copy_memory(ckpt_ptr + tl.cast(segment, tl.int64) * BNM, seg_ptr, rows, B, N, M, DTYPE, BLOCK_N, BLOCK_M)
        for t in range(t0, t1 - 1):
            step = tl.cast(t, tl.int64)
            tl.debug_barrier()
            _head_activations(p_ptr + step * B * P, act_ptr, row0, B, R, W, M, K, DTYPE, BLOCK_B, BLOCK_H, BLOCK_K,
                              BLOCK_HM, BLOCK_WM)
            tl.debug_barrier()
            _write_step(seg_ptr + (step - t0) * BNM, ww_ptr + (step + 1) * B * W * N, erase, add, row0, B, N, M, W,
                        DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        tl.debug_barrier()
        for j in range(t1 - t0):
            t = t1 - 1 - j
            step = tl.cast(t, tl.int64)
            h_ptr = hs_ptr + (step + 1) * B * C
            # Output layer: ∂L/∂h = ∂L/∂y W_out[:, :C] + carried, ∂L/∂r_t = ∂L/∂y W_out[:, C:] + carried.
            _output_bwd(dlogits_ptr + step * B * Y, wout_ptr, dh0_ptr, dr0_ptr, dh_ptr, dreads_ptr, row0, B, C, RM, Y,
                        LSTM, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
            p_t = p_ptr + step * B * P
            _head_activations(p_t, act_ptr, row0, B, R, W, M, K, DTYPE, BLOCK_B, BLOCK_H, BLOCK_K, BLOCK_HM, BLOCK_WM)
            tl.debug_barrier()
            # Memory interaction backward (Eq 2-9).
            wr_t = wr_ptr + step * B * R * N
            ww_t = ww_ptr + step * B * W * N
            _memory_bwd(seg_ptr + (step - t0) * BNM, act_ptr, gact_ptr, wr_t, ww_t, wr_t + B * R * N, ww_t + B * W * N,
                        wcr_ptr + step * B * R * N, wcw_ptr + step * B * W * N, dreads_ptr, dm0_ptr, dwr0_ptr,
                        dww0_ptr, tmp_ptr, row0, B, N, M, R, W, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M,
                        BLOCK_S, BLOCK_W, BLOCK_K)
            tl.debug_barrier()
            dp_t = dp_ptr + step * B * P
            _head_activations_bwd(p_t, act_ptr, gact_ptr, dp_t, row0, B, R, W, M, K, DTYPE, BLOCK_B, BLOCK_H,
                                  BLOCK_K, BLOCK_HM, BLOCK_WM)
            tl.debug_barrier()
            # ∂L/∂h += ∂L/∂p W_heads
            _add_rows_matmul(dh_ptr, C, dp_t, P, whd_ptr, C, row0, B, DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
            tl.debug_barrier()
            dg_t = dgates_ptr + step * B * G
            _controller_bwd(dh_ptr, dc0_ptr, h_ptr, cs_ptr + step * B * C, cs_ptr + (step + 1) * B * C,
                            gates_ptr + step * B * G, dg_t, row0, B, C, LSTM, DTYPE, BLOCK_B, BLOCK_J)
            tl.debug_barrier()
            # ∂L/∂u = ∂L/∂gates W_ih -> ∂L/∂x_t and the carried ∂L/∂r_{t-1}; carried ∂L/∂h_{t-1} = ∂L/∂gates W_hh.
            _inputs_bwd(dg_t, wih_ptr, whh_ptr, dx_ptr + step * B * X, dr0_ptr, dh0_ptr, row0, B, X, RM, C, G, LSTM,
                        DTYPE, PRECISION, BLOCK_B, BLOCK_J, BLOCK_D)
            tl.debug_barrier()


# ---------------------------------------------------------------------------------------------------------
# Launchers.

class SequenceConfig(NamedTuple):
    """Sizes the backward needs besides the saved tensors."""
    lstm: bool
    R: int
    W: int
    M: int
    S: int
    checkpoint_every: int
    dtype: torch.dtype  # of the inputs (the saved tensors are in the compute dtype)
    eps: float  # reference.COSINE_EPS, as passed in
    tiny: float  # reference.sharpen_floor(dtype), as passed in
    backward: KernelSettings  # read with the forward's (kernel_settings), so a bad setting fails before it runs


class SequenceSaved(NamedTuple):
    """What sequence_forward keeps for sequence_backward (layout in the module docstring)."""
    config: SequenceConfig
    x: torch.Tensor
    hs: torch.Tensor
    cs: Optional[torch.Tensor]
    gates: Optional[torch.Tensor]
    heads: torch.Tensor
    reads: torch.Tensor
    w_read: torch.Tensor
    w_write: torch.Tensor
    content_read: torch.Tensor
    content_write: torch.Tensor
    checkpoints: torch.Tensor


# The widest per-row tile of the activated heads ([BLOCK_B, next power of two of (R+W)·M] values in registers).
MAX_HEAD_WIDTH = 1024


def sequence_unsupported(x, layout) -> str | None:
    """Why these kernels do not take a sequence like x [.., B, X] with this head layout, or None. The model
    then runs it step by step (ntm_fast/model/fused.py logs the reason once)."""
    if x.dtype not in (torch.float32, torch.float64):
        return f"the sequence kernels compute float32 or float64, not {x.dtype}"
    width = (layout.read_heads + layout.write_heads) * layout.memory_width
    if width > MAX_HEAD_WIDTH:
        return f"(R+W)·M = {width} is over the sequence kernels' limit of {MAX_HEAD_WIDTH}"
    return None


def default_checkpoint_every(T: int) -> int:
    """ceil(sqrt(T)): the backward then holds about 2·sqrt(T) memories (checkpoints plus one segment)."""
    return max(1, math.ceil(math.sqrt(T)))


def _expect(name, tensor, shape, like):
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"sequence_forward: argument '{name}' must be a tensor of shape {list(shape)}, "
                         f"got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape) or tensor.dtype != like.dtype or tensor.device != like.device:
        raise ValueError(f"sequence_forward: argument '{name}' must be {like.dtype} on {like.device} with shape "
                         f"{list(shape)}, got {tensor.dtype} on {tensor.device} with shape {list(tensor.shape)}")


def _launch_args(settings: KernelSettings, B, N, M, R, W, S, dtype, eps, tiny):
    """Sizes, the compute DTYPE, the dot precision, the tile sizes (constexprs) and warps of one kernel.

    No software pipelining by default (stages=1, num_stages): pipelining the short dot loops (1-4 trips, as
    they were then) kept each loop's prologue buffers and addresses live besides, and spilled."""
    H, K = R + W, 2 * S + 1
    block_m = pow2(M)
    block_n = min(pow2(N), max(1, settings.memory // (settings.rows * block_m)))
    block_s = min(pow2(N), max(1, settings.slot // settings.rows))
    compute64 = dtype == torch.float64
    return dict(N=N, M=M, R=R, W=W, **shift_args(N, S, tiny, eps), DTYPE=tl.float64 if compute64 else tl.float32,
                PRECISION="ieee" if compute64 else settings.precision, BLOCK_B=settings.rows, BLOCK_N=block_n,
                BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_J=settings.cols, BLOCK_D=settings.depth, BLOCK_H=pow2(H),
                BLOCK_K=pow2(K), BLOCK_HM=pow2(H * M), BLOCK_WM=pow2(W * M), num_warps=settings.warps,
                num_stages=settings.stages)


def sequence_forward(x, h0, c0, reads0, w_read0, w_write0, memory0, weights, layout, keep_tape=True, *, eps, tiny,
                     checkpoint_every=None, dot_precision=None):
    """The logits [T, B, Y] of the whole sequence in one launch, and what the backward needs (see module doc).
    weights: (W_ih, b_ih, W_hh, b_hh, W_heads, b_heads, W_out, b_out); layout: the heads' (ops.HeadLayout).
    keep_tape is accepted for the launcher protocol: the kernel writes its per-step record either way."""
    W_ih, b_ih, W_hh, b_hh, W_heads, b_heads, W_out, b_out = weights
    read_heads, write_heads, shift_range = layout.read_heads, layout.write_heads, layout.shift_range
    if (not isinstance(x, torch.Tensor) or x.dim() != 3 or x.dtype not in (torch.float32, torch.float64)
            or x.shape[0] < 1 or x.shape[1] < 1):
        got = f"{x.dtype} of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"sequence_forward: argument 'x' must be a float32 or float64 tensor [T, B, X] with "
                         f"T, B >= 1, got {got}")
    if dot_precision is not None and dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"sequence_forward: argument 'dot_precision' must be one of {DOT_PRECISIONS}, "
                         f"got {dot_precision!r}")
    lstm = W_hh is not None
    T, B, X = x.shape
    R, W, S = read_heads, write_heads, shift_range
    if not (isinstance(memory0, torch.Tensor) and memory0.dim() == 3):
        raise ValueError("sequence_forward: argument 'memory0' must be a tensor [B, N, M]")
    N, M = memory0.shape[1:]
    C = W_ih.shape[0] // (4 if lstm else 1)
    H, K = R + W, 2 * S + 1
    P = H * M + 3 * H + H * K + 2 * W * M
    Y = W_out.shape[0]
    G = 4 * C if lstm else C
    expected = dict(memory0=(memory0, (B, N, M)), reads0=(reads0, (B, R * M)), w_read0=(w_read0, (B, R, N)),
                    w_write0=(w_write0, (B, W, N)), W_ih=(W_ih, (G, X + R * M)), b_ih=(b_ih, (G,)),
                    W_heads=(W_heads, (P, C)), b_heads=(b_heads, (P,)), W_out=(W_out, (Y, C + R * M)),
                    b_out=(b_out, (Y,)))
    if lstm:
        expected.update(h0=(h0, (B, C)), c0=(c0, (B, C)), W_hh=(W_hh, (G, C)), b_hh=(b_hh, (G,)))
    for name, (tensor, shape) in expected.items():
        _expect(name, tensor, shape, x)
    k = default_checkpoint_every(T) if checkpoint_every is None else checkpoint_every
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"sequence_forward: argument 'checkpoint_every' must be an integer >= 1, got {k!r}")

    forward, backward = kernel_settings("forward"), kernel_settings("backward")
    if dot_precision is not None:
        forward, backward = forward._replace(precision=dot_precision), backward._replace(precision=dot_precision)
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 0):  # tf32 needs Ampere's tensor cores
        forward, backward = forward._replace(precision="ieee"), backward._replace(precision="ieee")
    cdt = _common.compute_dtype(x.dtype)
    like = x if x.dtype == cdt else x.to(cdt)

    def new(*shape):
        return empty_output(shape, like)

    logits = empty_output((T, B, Y), x)
    hs, reads = new(T + 1, B, C), new(T + 1, B, R * M)
    w_read, w_write = new(T + 1, B, R, N), new(T + 1, B, W, N)
    cs, gates = (new(T + 1, B, C), new(T, B, G)) if lstm else (None, None)
    heads, checkpoints = new(T, B, P), new(-(-T // k), B, N, M)
    content_read, content_write = new(T, B, R, N), new(T, B, W, N)
    # The initial state goes in at index 0 (the kernel reads step t's inputs at index t).
    hs[0] = h0 if lstm else 0
    reads[0], w_read[0], w_write[0] = reads0, w_read0, w_write0
    if lstm:
        cs[0] = c0
    memory = memory0.to(cdt).contiguous().clone()  # the working memory, updated in place step by step
    weights = [w.contiguous() for w in (W_ih, b_ih, W_hh if lstm else W_ih, b_hh if lstm else b_ih, W_heads,
                                        b_heads, W_out, b_out)]
    dummy = hs  # stands for the LSTM-only buffers of a feedforward controller (never touched)
    scratch = torch.empty(B * P + 2 * B * N, dtype=cdt, device=x.device)  # activated heads; addressing's [2, B, N]
    _sequence_fwd_kernel[(triton.cdiv(B, forward.rows),)](
        x.contiguous(), *weights, logits, hs, cs if lstm else dummy, gates if lstm else dummy, heads, reads, w_read,
        w_write, content_read, content_write, checkpoints, memory, scratch, scratch[B * P:], T, k, B, X, C, Y,
        LSTM=lstm, BLOCK_R=pow2(R), GATES=forward.gates, **_launch_args(forward, B, N, M, R, W, S, x.dtype, eps,
                                                                        tiny))
    config = SequenceConfig(lstm, R, W, M, S, k, x.dtype, eps, tiny, backward)
    return logits, SequenceSaved(config, x, hs, cs, gates, heads, reads, w_read, w_write, content_read, content_write,
                                 checkpoints)


def sequence_backward(saved: SequenceSaved, d_logits, weights):
    """Gradients of sequence_forward's inputs for ∂L/∂logits [T, B, Y], in the order of the module docstring.
    weights: (W_ih, W_hh, W_heads, W_out)."""
    W_ih, W_hh, W_heads, W_out = weights
    cfg = saved.config
    x, hs = saved.x, saved.hs
    T, B, X = x.shape
    C = hs.shape[2]
    N, M, R, W = saved.checkpoints.shape[2], cfg.M, cfg.R, cfg.W
    Y = W_out.shape[0]
    P, G = saved.heads.shape[2], (4 * C if cfg.lstm else C)
    if tuple(d_logits.shape) != (T, B, Y):
        raise ValueError(f"sequence_backward: argument 'd_logits' must have shape {[T, B, Y]}, "
                         f"got {list(d_logits.shape)}")
    cdt = hs.dtype

    def new(*shape):
        return empty_output(shape, hs)

    d_x = new(T, B, X)
    d_h0, d_c0 = (new(B, C), new(B, C)) if cfg.lstm else (None, None)
    d_reads0, d_w_read0, d_w_write0, d_memory0 = new(B, R * M), new(B, R, N), new(B, W, N), new(B, N, M)
    d_gates, d_heads = new(T, B, G), new(T, B, P)
    segment = torch.empty((min(cfg.checkpoint_every, T), B, N, M), dtype=cdt, device=hs.device)
    # scratch: activated heads, their gradients, ∂L/∂h [B, C], ∂L/∂r [B, R·M], addressing's [2, B, N]
    scratch = torch.empty(2 * B * P + B * C + B * R * M + 2 * B * N, dtype=cdt, device=hs.device)
    pieces = torch.split(scratch, [B * P, B * P, B * C, B * R * M, 2 * B * N])
    weights = [w.contiguous() for w in (W_ih, W_hh if cfg.lstm else W_ih, W_heads, W_out)]
    dummy = hs
    _sequence_bwd_kernel[(triton.cdiv(B, cfg.backward.rows),)](
        d_logits.to(cdt).contiguous(), *weights, hs, saved.cs if cfg.lstm else dummy,
        saved.gates if cfg.lstm else dummy, saved.heads, saved.w_read, saved.w_write, saved.content_read,
        saved.content_write, saved.checkpoints,
        d_x, d_h0 if cfg.lstm else dummy, d_c0 if cfg.lstm else dummy, d_reads0, d_w_read0, d_w_write0, d_memory0,
        d_gates, d_heads, segment, *pieces, T, cfg.checkpoint_every, B, X, C, Y, LSTM=cfg.lstm,
        BLOCK_W=pow2(W), **_launch_args(cfg.backward, B, N, M, R, W, cfg.S, cfg.dtype, cfg.eps, cfg.tiny))
    # Weight gradients: sums over every step and row, as GEMMs over the T·B rows.
    rows = T * B
    dg, dp, dy = d_gates.view(rows, G), d_heads.view(rows, P), d_logits.to(cdt).reshape(rows, Y)
    u = torch.cat([x.to(cdt).reshape(rows, X), saved.reads[:T].reshape(rows, R * M)], dim=1)
    h_in, h_out = hs[:T].reshape(rows, C), hs[1:].reshape(rows, C)
    dtype = cfg.dtype
    dW_ih, db_ih = (dg.t() @ u).to(dtype), dg.sum(0).to(dtype)
    dW_hh = (dg.t() @ h_in).to(dtype) if cfg.lstm else None
    dW_heads, db_heads = (dp.t() @ h_out).to(dtype), dp.sum(0).to(dtype)
    dW_out = (dy.t() @ torch.cat([h_out, saved.reads[1:].reshape(rows, R * M)], dim=1)).to(dtype)
    db_out = dy.sum(0).to(dtype)
    out = [d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0]
    out = [None if t is None else t.to(dtype) for t in out]
    return (*out, dW_ih, db_ih, dW_hh, dW_heads, db_heads, dW_out, db_out)
