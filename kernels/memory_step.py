"""One time step's whole memory interaction (Graves et al. 2014, Eq 2-9) as one kernel each way.

Forward, per program (BLOCK_B batch rows): address every read head and every write head against M_{t-1}
(Eq 5-9, address.address_head_fwd), then one pass over the slot tiles that loads M_{t-1} once, reads it
with the read weightings (Eq 2) and stores M_t (Eq 3-4) — reads see the memory before this step's write.

Backward, per program: one pass over the slot tiles gives ∂L/∂M_{t-1} from the read and the write, ∂L/∂erase,
∂L/∂add and the total ∂L/∂w of every head (upstream + read/write); then each head's addressing backward
(address.address_head_bwd) adds its part of ∂L/∂M_{t-1}. Saved for backward: the inputs and the two
weightings (outputs), never M_t or any addressing intermediate.

Shapes: memory [B, N, M]; read heads: key [B, R, M], beta/gate/gamma [B, R], shift [B, R, 2S+1],
w_read_prev [B, R, N]; write heads likewise with W, plus erase/add [B, W, M].
Returns reads [B, R, M], w_read [B, R, N], w_write [B, W, N], new memory [B, N, M].
"""
from __future__ import annotations

import triton
import triton.language as tl

from ntm_fast.ops.heads import ReadHeads, WriteHeads
from ntm_fast.ops.shared import empty_output

from ._common import contiguous, launch, memory_offsets, pow2, scratch, shift_args, store_heads
from .address import address_head_bwd, address_head_fwd
from .read_write import read_bwd_tile, read_tile, write_bwd_tile, write_tile


@triton.jit
def _memory_step_fwd_kernel(mem_ptr, rkey_ptr, rbeta_ptr, rgate_ptr, rshift_ptr, rgamma_ptr,
                            wkey_ptr, wbeta_ptr, wgate_ptr, wshift_ptr, wgamma_ptr, erase_ptr, add_ptr,
                            rprev_ptr, wprev_ptr, reads_ptr, rw_ptr, ww_ptr, new_ptr, tmp_ptr,
                            R, W, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    for h in range(R):
        address_head_fwd(mem_ptr, rkey_ptr, rbeta_ptr, rgate_ptr, rshift_ptr, rgamma_ptr, rprev_ptr, rw_ptr, rw_ptr,
                         tmp_ptr, h, R, rows, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S,
                         False)
    for h in range(W):
        address_head_fwd(mem_ptr, wkey_ptr, wbeta_ptr, wgate_ptr, wshift_ptr, wgamma_ptr, wprev_ptr, ww_ptr, ww_ptr,
                         tmp_ptr, h, W, rows, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S,
                         False)
    tl.debug_barrier()  # the weightings are complete
    reads = tl.zeros([BLOCK_B, BLOCK_R, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        reads = read_tile(reads, mem, rw_ptr, rows, slots, R, B, N, DTYPE, BLOCK_R)
        new = write_tile(mem, ww_ptr, erase_ptr, add_ptr, rows, slots, W, B, N, M, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        tl.store(new_ptr + offsets, new, mask=mask)
    store_heads(reads_ptr, reads, rows, B, R, M, BLOCK_R, BLOCK_M)


@triton.jit
def _memory_step_bwd_kernel(mem_ptr, rkey_ptr, rbeta_ptr, rgate_ptr, rshift_ptr, rgamma_ptr,
                            wkey_ptr, wbeta_ptr, wgate_ptr, wshift_ptr, wgamma_ptr, erase_ptr, add_ptr,
                            rprev_ptr, wprev_ptr, rw_ptr, ww_ptr,
                            greads_ptr, grw_ptr, gww_ptr, gnew_ptr,
                            gmem_ptr, grkey_ptr, grbeta_ptr, grgate_ptr, grshift_ptr, grgamma_ptr,
                            gwkey_ptr, gwbeta_ptr, gwgate_ptr, gwshift_ptr, gwgamma_ptr, gerase_ptr, gadd_ptr,
                            grprev_ptr, gwprev_ptr, tmp_ptr,
                            R, W, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_W: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    # Read and write backward. The total ∂L/∂w of each head is parked in its ∂L/∂w_prev buffer, which
    # address_head_bwd reads in full before overwriting it with ∂L/∂w_prev.
    g_erase = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    g_add = tl.zeros([BLOCK_B, BLOCK_W, BLOCK_M], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
        offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
        mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_new = tl.load(gnew_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
        g_mem_read = read_bwd_tile(mem, rw_ptr, greads_ptr, grprev_ptr, grw_ptr, rows, slots, R, B, N, M, True,
                                   DTYPE, BLOCK_B, BLOCK_N, BLOCK_M)
        g_mem_write, g_erase, g_add = write_bwd_tile(mem, g_new, ww_ptr, erase_ptr, add_ptr, gwprev_ptr, gww_ptr,
                                                     g_erase, g_add, rows, slots, W, B, N, M, True, DTYPE, BLOCK_B,
                                                     BLOCK_N, BLOCK_M, BLOCK_W)
        tl.store(gmem_ptr + offsets, g_mem_read + g_mem_write, mask=mask)
    store_heads(gerase_ptr, g_erase, rows, B, W, M, BLOCK_W, BLOCK_M)
    store_heads(gadd_ptr, g_add, rows, B, W, M, BLOCK_W, BLOCK_M)
    # Addressing backward of every head, each adding to ∂L/∂M_{t-1}. tmp_ptr: [2, B, N] for the addressing,
    # then the recomputed content weightings of the read heads [B, R, N] and of the write heads [B, W, N].
    wc_read = tmp_ptr + 2 * B * N
    wc_write = wc_read + B * R * N
    for h in range(R):
        address_head_bwd(mem_ptr, rkey_ptr, rbeta_ptr, rgate_ptr, rshift_ptr, rgamma_ptr, rprev_ptr, rw_ptr, wc_read,
                         grprev_ptr, gmem_ptr, grkey_ptr, grbeta_ptr, grgate_ptr, grshift_ptr, grgamma_ptr,
                         grprev_ptr, tmp_ptr, h, R, rows, True, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N,
                         BLOCK_M, BLOCK_S, BLOCK_K, False)
    for h in range(W):
        address_head_bwd(mem_ptr, wkey_ptr, wbeta_ptr, wgate_ptr, wshift_ptr, wgamma_ptr, wprev_ptr, ww_ptr, wc_write,
                         gwprev_ptr, gmem_ptr, gwkey_ptr, gwbeta_ptr, gwgate_ptr, gwshift_ptr, gwgamma_ptr,
                         gwprev_ptr, tmp_ptr, h, W, rows, True, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N,
                         BLOCK_M, BLOCK_S, BLOCK_K, False)


def memory_step_forward(memory, read_heads, write_heads, w_read_prev, w_write_prev, *, eps, tiny):
    """Every head addressed against M_{t-1}, the reads, then the write, in one launch (see the module doc).
    Returns (reads [B, R, M], w_read [B, R, N], w_write [B, W, N], M_t [B, N, M])."""
    inputs = contiguous(memory, *read_heads, *write_heads, w_read_prev, w_write_prev)
    (B, N, M), R, W, K = memory.shape, w_read_prev.shape[1], w_write_prev.shape[1], read_heads.shift.shape[-1]
    reads = empty_output((B, R, M), memory)
    w_read, w_write = empty_output((B, R, N), memory), empty_output((B, W, N), memory)
    new_memory = empty_output((B, N, M), memory)
    grid, args = launch(memory)
    _memory_step_fwd_kernel[grid](*inputs, reads, w_read, w_write, new_memory, scratch(2, B, N, memory), R, W,
                                  **args, **shift_args(N, (K - 1) // 2, tiny, eps), BLOCK_S=args["BLOCK_N"],
                                  BLOCK_R=pow2(R))
    return reads, w_read, w_write, new_memory


def memory_step_backward(memory, read_heads, write_heads, w_read_prev, w_write_prev, w_read, w_write, grad_reads,
                         grad_w_read, grad_w_write, grad_memory, *, eps, tiny):
    """-> (d_memory, d_read_heads: ReadHeads, d_write_heads: WriteHeads, d_w_read_prev, d_w_write_prev)."""
    inputs = contiguous(memory, *read_heads, *write_heads, w_read_prev, w_write_prev)
    (B, N, M), R, W, K = memory.shape, w_read.shape[1], w_write.shape[1], read_heads.shift.shape[-1]
    d_memory, *d_heads = grads = [empty_output(t.shape, t) for t in inputs]
    upstream = contiguous(grad_reads, grad_w_read, grad_w_write, grad_memory)
    grid, args = launch(memory)
    _memory_step_bwd_kernel[grid](*inputs, *contiguous(w_read, w_write), *upstream, *grads,
                                  scratch(2 + R + W, B, N, memory), R, W, **args,
                                  **shift_args(N, (K - 1) // 2, tiny, eps), BLOCK_S=args["BLOCK_N"], BLOCK_W=pow2(W), BLOCK_K=pow2(K))
    return d_memory, ReadHeads(*d_heads[:5]), WriteHeads(*d_heads[5:12]), d_heads[12], d_heads[13]
