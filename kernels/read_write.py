"""Read (Graves et al. 2014, Eq 2) and the erase/add write (Eq 3-4), one fused pass each way.

    read:  r_h = Σ_i w_h[i]·M[i]                                   memory [B, N, M], w [B, H, N] -> [B, H, M]
    write: M_t = M_{t-1} ⊙ Π_h (1 - w_h e_hᵀ) + Σ_h w_h a_hᵀ        w [B, W, N], erase/add [B, W, M] -> [B, N, M]

A program owns BLOCK_B batch rows and walks the slots in tiles; every head is handled inside the tile, so
memory is loaded once (and the write stores it once). Per-head results that sum over slots (reads, and
∂L/∂erase, ∂L/∂add) are [BLOCK_B, BLOCK_H, BLOCK_M] register accumulators. The tile helpers are shared
with memory_step.py.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ntm_fast.ops.shared import empty_output

from ._common import contiguous, launch, load_head, memory_offsets, pow2, store_heads


@triton.jit
def read_tile(acc, mem, w_ptr, rows, slots, H, B, N, DTYPE: tl.constexpr, BLOCK_H: tl.constexpr):
    """Eq 2 on one slot tile: acc[:, h] += Σ_i w_h[i]·M[i] for the H heads of w_ptr ([B, H, N])."""
    mask = (rows < B)[:, None] & (slots < N)[None, :]
    heads = tl.arange(0, BLOCK_H)
    for h in range(H):
        w = tl.load(w_ptr + (rows * H + h)[:, None] * N + slots[None, :], mask=mask, other=0.0).to(DTYPE)
        acc += tl.where((heads == h)[None, :, None], tl.sum(w[:, :, None] * mem, axis=1)[:, None, :], 0.0)
    return acc


@triton.jit
def read_bwd_tile(mem, w_ptr, gread_ptr, gw_ptr, gw_in_ptr, rows, slots, H, B, N, M, HAS_GW_IN: tl.constexpr,
                  DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Backward of Eq 2 on one tile. Stores ∂L/∂w_h[i] = ∂L/∂r_h·M[i] (plus gw_in, if HAS_GW_IN) into gw_ptr
    and returns the reads' part of ∂L/∂M: Σ_h w_h[i]·∂L/∂r_h."""
    cols = tl.arange(0, BLOCK_M)
    mask = (rows < B)[:, None] & (slots < N)[None, :]
    g_mem = tl.zeros([BLOCK_B, BLOCK_N, BLOCK_M], DTYPE)
    for h in range(H):
        offs = (rows * H + h)[:, None] * N + slots[None, :]
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        g_read = load_head(gread_ptr, rows, h, H, cols, B, M, DTYPE)
        g_mem += w[:, :, None] * g_read[:, None, :]
        g_w = tl.sum(mem * g_read[:, None, :], axis=2)
        if HAS_GW_IN:
            g_w += tl.load(gw_in_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        tl.store(gw_ptr + offs, g_w, mask=mask)
    return g_mem


@triton.jit
def _keep(w_ptr, erase_ptr, rows, slots, skip, W, B, N, M, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Π_{h != skip} (1 - w_h[i]·e_h) on one tile (skip = -1: over all W heads)."""
    cols = tl.arange(0, BLOCK_M)
    mask_n = (rows < B)[:, None] & (slots < N)[None, :]
    keep = tl.full([BLOCK_B, BLOCK_N, BLOCK_M], 1.0, DTYPE)
    for h in range(W):
        if h != skip:
            w = tl.load(w_ptr + (rows * W + h)[:, None] * N + slots[None, :], mask=mask_n, other=0.0).to(DTYPE)
            keep *= 1 - w[:, :, None] * load_head(erase_ptr, rows, h, W, cols, B, M, DTYPE)[:, None, :]
    return keep


@triton.jit
def write_tile(mem, w_ptr, erase_ptr, add_ptr, rows, slots, W, B, N, M, DTYPE: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Eq 3-4 on one tile: M ⊙ Π_h (1 - w_h e_hᵀ) + Σ_h w_h a_hᵀ."""
    cols = tl.arange(0, BLOCK_M)
    mask = (rows < B)[:, None] & (slots < N)[None, :]
    added = tl.zeros([BLOCK_B, BLOCK_N, BLOCK_M], DTYPE)
    for h in range(W):
        w = tl.load(w_ptr + (rows * W + h)[:, None] * N + slots[None, :], mask=mask, other=0.0).to(DTYPE)
        added += w[:, :, None] * load_head(add_ptr, rows, h, W, cols, B, M, DTYPE)[:, None, :]
    keep = _keep(w_ptr, erase_ptr, rows, slots, -1, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
    return mem * keep + added


@triton.jit
def write_bwd_tile(mem, g_new, w_ptr, erase_ptr, add_ptr, gw_ptr, gw_in_ptr, g_erase, g_add, rows, slots, W, B,
                   N, M, HAS_GW_IN: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """Backward of Eq 3-4 on one tile, given g_new = ∂L/∂M_t.

    Stores ∂L/∂w_h (plus gw_in, if HAS_GW_IN) into gw_ptr, adds the tile's ∂L/∂e_h and ∂L/∂a_h into the
    [BLOCK_B, BLOCK_W, BLOCK_M] accumulators g_erase and g_add, and returns them with the write's part of
    ∂L/∂M_{t-1} = g_new ⊙ Π_h (1 - w_h e_hᵀ). The product over the other heads is formed directly (not as
    keep / (1 - w_h e_h)), so full erases (w_h e_h = 1) are exact."""
    cols = tl.arange(0, BLOCK_M)
    heads = tl.arange(0, BLOCK_W)
    mask = (rows < B)[:, None] & (slots < N)[None, :]
    for h in range(W):
        offs = (rows * W + h)[:, None] * N + slots[None, :]
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        erase = load_head(erase_ptr, rows, h, W, cols, B, M, DTYPE)
        add = load_head(add_ptr, rows, h, W, cols, B, M, DTYPE)
        # ∂L/∂(1 - w_h e_hᵀ)
        g_factor = g_new * mem * _keep(w_ptr, erase_ptr, rows, slots, h, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N,
                                       BLOCK_M)
        g_w = tl.sum(g_new * add[:, None, :] - g_factor * erase[:, None, :], axis=2)
        if HAS_GW_IN:
            g_w += tl.load(gw_in_ptr + offs, mask=mask, other=0.0).to(DTYPE)
        tl.store(gw_ptr + offs, g_w, mask=mask)
        this_head = (heads == h)[None, :, None]
        g_erase -= tl.where(this_head, tl.sum(g_factor * w[:, :, None], axis=1)[:, None, :], 0.0)
        g_add += tl.where(this_head, tl.sum(g_new * w[:, :, None], axis=1)[:, None, :], 0.0)
    keep = _keep(w_ptr, erase_ptr, rows, slots, -1, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
    return g_new * keep, g_erase, g_add


@triton.jit
def _read_kernel(mem_ptr, w_ptr, out_ptr, H, B, N, M, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_H, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        acc = read_tile(acc, mem, w_ptr, rows, slots, H, B, N, DTYPE, BLOCK_H)
    store_heads(out_ptr, acc, rows, B, H, M, BLOCK_H, BLOCK_M)


@triton.jit
def _read_bwd_kernel(mem_ptr, w_ptr, gread_ptr, gmem_ptr, gw_ptr, H, B, N, M, DTYPE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_mem = read_bwd_tile(mem, w_ptr, gread_ptr, gw_ptr, gw_ptr, rows, slots, H, B, N, M, False, DTYPE,
                              BLOCK_B, BLOCK_N, BLOCK_M)
        tl.store(gmem_ptr + offsets, g_mem, mask=mask)


@triton.jit
def _write_kernel(mem_ptr, w_ptr, erase_ptr, add_ptr, out_ptr, W, B, N, M, DTYPE: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        new = write_tile(mem, w_ptr, erase_ptr, add_ptr, rows, slots, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        tl.store(out_ptr + offsets, new, mask=mask)


@triton.jit
def _write_bwd_kernel(mem_ptr, w_ptr, erase_ptr, add_ptr, gnew_ptr, gmem_ptr, gw_ptr, gerase_ptr, gadd_ptr, W, B,
                      N, M, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    g_erase = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    g_add = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_new = tl.load(gnew_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_mem, g_erase, g_add = write_bwd_tile(mem, g_new, w_ptr, erase_ptr, add_ptr, gw_ptr, gw_ptr, g_erase, g_add,
                                               rows, slots, W, B, N, M, False, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M,
                                               BLOCK_W)
        tl.store(gmem_ptr + offsets, g_mem, mask=mask)
    store_heads(gerase_ptr, g_erase, rows, B, W, M, BLOCK_W, BLOCK_M)
    store_heads(gadd_ptr, g_add, rows, B, W, M, BLOCK_W, BLOCK_M)


def read_forward(memory, w):
    """Eq 2: memory [B, N, M], w [B, H, N] -> reads [B, H, M]."""
    memory, w = contiguous(memory, w)
    (B, N, M), H = memory.shape, w.shape[1]
    reads = empty_output((B, H, M), memory)
    grid, args = launch(memory)
    _read_kernel[grid](memory, w, reads, H, **args, BLOCK_H=pow2(H))
    return reads


def read_backward(memory, w, grad_reads):
    """-> (d_memory, d_w)."""
    memory, w = contiguous(memory, w)
    d_memory, d_w = empty_output(memory.shape, memory), empty_output(w.shape, w)
    grid, args = launch(memory)
    _read_bwd_kernel[grid](memory, w, grad_reads.contiguous(), d_memory, d_w, w.shape[1], **args)
    return d_memory, d_w


def write_forward(memory, w, erase, add):
    """Eq 3-4 with W heads: memory [B, N, M], w [B, W, N], erase/add [B, W, M] -> new memory [B, N, M]."""
    inputs = contiguous(memory, w, erase, add)
    new_memory = empty_output(memory.shape, memory)
    grid, args = launch(inputs[0])
    _write_kernel[grid](*inputs, new_memory, w.shape[1], **args)
    return new_memory


def write_backward(memory, w, erase, add, grad_memory):
    """-> (d_memory, d_w, d_erase, d_add)."""
    inputs = contiguous(memory, w, erase, add)
    grads = [empty_output(t.shape, t) for t in inputs]
    W = w.shape[1]
    grid, args = launch(inputs[0])
    _write_bwd_kernel[grid](*inputs, grad_memory.contiguous(), *grads, W, **args, BLOCK_W=pow2(W))
    return tuple(grads)
