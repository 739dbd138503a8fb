"""Addressing (Graves et al. 2014, Eq 5-9) as one fused kernel forward and one backward.

For each head: K[i] = k·M[i] / (sqrt(|k|²+ε)·sqrt(|M[i]|²+ε))       (Eq 6, smoothed cosine)
               w_c = softmax_i(β·K)                                  (Eq 5)
               w_g = g·w_c + (1-g)·w_prev                            (Eq 7)
               w_s[i] = Σ_j s[j+S]·w_g[(i-j) mod N], j = -S..S       (Eq 8)
               w = softmax_i(γ·log max(w_s[i], tiny))                (Eq 9, = w_s^γ / Σ w_s^γ)

Shapes: memory [B, N, M]; key [B, H, M]; beta, gate, gamma [B, H]; shift [B, H, 2S+1]; w_prev, w [B, H, N].

A program owns BLOCK_B batch rows and runs its H heads one after the other, walking the slots in tiles
(see _common). The softmaxes over slots are online (running max and sum), so any N works. The circular
shift reads w_g at slots of other tiles (and of other threads), so w_g goes through a per-call [B, N]
scratch in global memory and is read back at shifted indices after a barrier; the sharpening logits wait
in a second one between their running softmax statistics and the final normalisation.

The backward recomputes K, w_c, w_g and w_s from the saved inputs (it saves only the inputs and w): the
FlashAttention trade. The @triton.jit helpers `address_head_fwd` and `address_head_bwd` are the per-head
pipeline; memory_step.py runs them for its read and write heads.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ntm_fast.ops.heads import ReadHeads
from ntm_fast.ops.shared import empty_output

from ._common import (contiguous, div, launch, load_head, memory_offsets, pow2, scratch, shift_args, sqrt,
                      store_head)


@triton.jit
def _head_params(key_ptr, beta_ptr, gate_ptr, gamma_ptr, h, H, rows, B, M, EPS: tl.constexpr,
                 DTYPE: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """key [BLOCK_B, BLOCK_M], sqrt(|k|²+ε), β, g, γ [BLOCK_B] of head h (of H) for the given batch rows."""
    row_ok = rows < B
    hrows = rows * H + h
    key = load_head(key_ptr, rows, h, H, tl.arange(0, BLOCK_M), B, M, DTYPE)
    key_norm = sqrt(tl.sum(key * key, axis=1) + EPS, DTYPE)
    beta = tl.load(beta_ptr + hrows, mask=row_ok, other=0.0).to(DTYPE)
    gate = tl.load(gate_ptr + hrows, mask=row_ok, other=0.0).to(DTYPE)
    gamma = tl.load(gamma_ptr + hrows, mask=row_ok, other=0.0).to(DTYPE)
    return key, key_norm, beta, gate, gamma


@triton.jit
def _slot_tile(start, rows, hrows, B, N, BLOCK_N: tl.constexpr):
    """Slots start..start+BLOCK_N and, for their [BLOCK_B, BLOCK_N] block: offsets into a [B, N] scratch,
    offsets into a [B, H, N] weighting (head rows hrows), and the in-bounds mask."""
    slots = start + tl.arange(0, BLOCK_N).to(tl.int64)
    mask = (rows < B)[:, None] & (slots < N)[None, :]
    return slots, rows[:, None] * N + slots[None, :], hrows[:, None] * N + slots[None, :], mask


@triton.jit
def _content_logits(mem_ptr, key, key_norm, beta, rows, slots, B, N, M, EPS: tl.constexpr,
                    DTYPE: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    """Eq 6 on one slot tile: β·K [BLOCK_B, BLOCK_N] (-inf beyond N), K, sqrt(|M[i]|²+ε), the memory tile
    and its offsets and mask."""
    offsets, mask = memory_offsets(rows, slots, tl.arange(0, BLOCK_M), B, N, M)
    mem = tl.load(mem_ptr + offsets, mask=mask, other=0.0).to(DTYPE)
    mem_norm = sqrt(tl.sum(mem * mem, axis=2) + EPS, DTYPE)
    sim = div(tl.sum(mem * key[:, None, :], axis=2), key_norm[:, None] * mem_norm, DTYPE)
    logits = tl.where((slots < N)[None, :], beta[:, None] * sim, float("-inf"))
    return logits, sim, mem_norm, mem, offsets, mask


@triton.jit
def _gated_weights(mem_ptr, wprev_ptr, wg_ptr, wc_ptr, key, key_norm, beta, gate, hrows, rows, B, N, M,
                   EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, KEEP_CONTENT: tl.constexpr,
                   SAVED_CONTENT: tl.constexpr):
    """Eq 5-7 for one head: leaves w_g in the [B, N] scratch wg_ptr. w_c (in a [B, H, N] tensor wc_ptr) is
    computed from the memory and stored there with KEEP_CONTENT, or, with SAVED_CONTENT, read from there
    instead (no pass over the memory). The memory is walked in BLOCK_N-slot tiles, the [B, N] vectors in
    BLOCK_S-slot ones."""
    run_max = tl.full([BLOCK_B], float("-inf"), DTYPE)
    run_sum = tl.zeros([BLOCK_B], DTYPE)
    if not SAVED_CONTENT:
        for start in range(0, N, BLOCK_N):
            slots, offs, _, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_N)
            logits, _, _, _, _, _ = _content_logits(mem_ptr, key, key_norm, beta, rows, slots, B, N, M, EPS, DTYPE,
                                                    BLOCK_M)
            new_max = tl.maximum(run_max, tl.max(logits, axis=1))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            run_max = new_max
            tl.store(wg_ptr + offs, logits, mask=mask)  # parked until the softmax sum is known
        tl.debug_barrier()
    for start in range(0, N, BLOCK_S):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        if SAVED_CONTENT:
            w_content = tl.load(wc_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        else:
            logits = tl.load(wg_ptr + offs, mask=mask, other=float("-inf"))
            w_content = div(tl.exp(logits - run_max[:, None]), run_sum[:, None], DTYPE)
            if KEEP_CONTENT:
                tl.store(wc_ptr + head_offs, w_content, mask=mask)
        w_prev = tl.load(wprev_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        tl.store(wg_ptr + offs, gate[:, None] * w_content + (1 - gate[:, None]) * w_prev, mask=mask)
    tl.debug_barrier()
    return run_max, run_sum


@triton.jit
def _shifted(src_ptr, shift_ptr, hrows, rows, slots, B, N, S, WRAP, TRANSPOSE: tl.constexpr,
             DTYPE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Eq 8 on one slot tile of the [B, N] scratch src: Σ_j s[j+S]·src[(i-j) mod N] (its transpose,
    Σ_j s[j+S]·src[(i+j) mod N], with TRANSPOSE). Zero beyond N."""
    K = 2 * S + 1
    row_ok = rows < B
    out = tl.zeros([BLOCK_B, BLOCK_N], DTYPE)
    for k in range(K):
        s = tl.load(shift_ptr + hrows * K + k, mask=row_ok, other=0.0).to(DTYPE)
        offset = k - S
        if TRANSPOSE:
            offset = -offset
        src = tl.load(src_ptr + rows[:, None] * N + ((slots - offset + WRAP) % N)[None, :], mask=row_ok[:, None],
                      other=0.0)
        out += s[:, None] * src
    return tl.where((slots < N)[None, :], out, 0.0)


@triton.jit
def _clamp_tiny(w_shifted, TINY: tl.constexpr):
    """max(w_s, tiny) of Eq 9's log that keeps a NaN w_s NaN, as the reference's clamp does (Triton's
    default maximum returns the other operand, which turned a NaN memory into uniform weights 1/N)."""
    return tl.maximum(w_shifted, TINY, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def address_head_fwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, tmp_ptr,
                     h, H, rows, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                     KEEP_CONTENT: tl.constexpr):
    """The whole addressing of head h (of H) for the given batch rows; w stored into w_ptr [B, H, N] (and the
    content weighting w_c into wc_ptr [B, H, N] with KEEP_CONTENT, for a backward that reads it back).

    tmp_ptr: [2, B, N] scratch (w_g, then the sharpening logits)."""
    tl.debug_barrier()  # the previous head may still read the scratch
    hrows = rows * H + h
    wg_ptr = tmp_ptr
    z_ptr = tmp_ptr + B * N
    key, key_norm, beta, gate, gamma = _head_params(key_ptr, beta_ptr, gate_ptr, gamma_ptr, h, H, rows, B, M,
                                                    EPS, DTYPE, BLOCK_M)
    _gated_weights(mem_ptr, wprev_ptr, wg_ptr, wc_ptr, key, key_norm, beta, gate, hrows, rows, B, N, M, EPS, DTYPE,
                   BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S, KEEP_CONTENT, False)
    # Eq 8-9: z = γ·log max(w_s, tiny), softmax over slots with running statistics.
    run_max = tl.full([BLOCK_B], float("-inf"), DTYPE)
    run_sum = tl.zeros([BLOCK_B], DTYPE)
    for start in range(0, N, BLOCK_S):
        slots, offs, _, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        w_shifted = _shifted(wg_ptr, shift_ptr, hrows, rows, slots, B, N, S, WRAP, False, DTYPE, BLOCK_B, BLOCK_S)
        z = tl.where((slots < N)[None, :], gamma[:, None] * tl.log(_clamp_tiny(w_shifted, TINY)), float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        tl.store(z_ptr + offs, z, mask=mask)
    tl.debug_barrier()
    for start in range(0, N, BLOCK_S):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        z = tl.load(z_ptr + offs, mask=mask, other=float("-inf"))
        tl.store(w_ptr + head_offs, div(tl.exp(z - run_max[:, None]), run_sum[:, None], DTYPE), mask=mask)


@triton.jit
def address_head_bwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr, gw_ptr,
                     gmem_ptr, gkey_ptr, gbeta_ptr, ggate_ptr, gshift_ptr, ggamma_ptr, gwprev_ptr, tmp_ptr,
                     h, H, rows, accumulate, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                     BLOCK_K: tl.constexpr, SAVED_CONTENT: tl.constexpr):
    """Gradients of head h's addressing given gw = ∂L/∂w (gw_ptr, [B, H, N]).

    Writes ∂L/∂key, β, g, shift, γ, w_prev of the head and adds ∂L/∂memory into gmem_ptr (or stores it,
    if not `accumulate`). gw_ptr may be gwprev_ptr itself: gw is read in full before ∂L/∂w_prev is written.
    wc_ptr [B, H, N]: the content weightings w_c, recomputed from the memory into it, or with SAVED_CONTENT
    read from it (as the forward kept them). tmp_ptr: [2, B, N] scratch (w_g then ∂L/∂w_g; ∂L/∂w_s). The
    memory is walked in BLOCK_N-slot tiles, twice (Eq 6's logits, then its backward) or with SAVED_CONTENT
    once; the passes over [B, N] vectors take BLOCK_S slots at a time."""
    tl.debug_barrier()
    hrows = rows * H + h
    row_ok = rows < B
    K = 2 * S + 1
    wg_ptr = tmp_ptr
    gws_ptr = tmp_ptr + B * N
    key, key_norm, beta, gate, gamma = _head_params(key_ptr, beta_ptr, gate_ptr, gamma_ptr, h, H, rows, B, M,
                                                    EPS, DTYPE, BLOCK_M)
    c_max, c_sum = _gated_weights(mem_ptr, wprev_ptr, wg_ptr, wc_ptr, key, key_norm, beta, gate, hrows, rows, B, N,
                                  M, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S, True, SAVED_CONTENT)

    # Eq 9 backward. With z = γ·log max(w_s, tiny): ∂L/∂z = w·(gw - Σ w·gw); ∂L/∂γ = Σ ∂L/∂z·log max(w_s, tiny);
    # ∂L/∂w_s = γ·∂L/∂z / w_s where w_s ≥ tiny (the clamp passes no gradient below it).
    w_dot_gw = tl.zeros([BLOCK_B], DTYPE)
    for start in range(0, N, BLOCK_S):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        w = tl.load(w_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        w_dot_gw += tl.sum(w * tl.load(gw_ptr + head_offs, mask=mask, other=0.0).to(DTYPE), axis=1)
    g_gamma = tl.zeros([BLOCK_B], DTYPE)
    g_shift = tl.zeros([BLOCK_B, BLOCK_K], DTYPE)
    for start in range(0, N, BLOCK_S):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        w_shifted = _shifted(wg_ptr, shift_ptr, hrows, rows, slots, B, N, S, WRAP, False, DTYPE, BLOCK_B, BLOCK_S)
        clamped = _clamp_tiny(w_shifted, TINY)
        w = tl.load(w_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        g_z = w * (tl.load(gw_ptr + head_offs, mask=mask, other=0.0).to(DTYPE) - w_dot_gw[:, None])
        g_gamma += tl.sum(g_z * tl.log(clamped), axis=1)
        g_ws = tl.where(w_shifted >= TINY, div(gamma[:, None] * g_z, clamped, DTYPE), 0.0)
        tl.store(gws_ptr + offs, g_ws, mask=mask)
        # Eq 8 backward for the shift weights: ∂L/∂s[j+S] = Σ_i ∂L/∂w_s[i]·w_g[(i-j) mod N].
        for k in range(K):
            w_gated = tl.load(wg_ptr + rows[:, None] * N + ((slots - (k - S) + WRAP) % N)[None, :],
                              mask=row_ok[:, None], other=0.0)
            g_shift += tl.where((tl.arange(0, BLOCK_K) == k)[None, :], tl.sum(g_ws * w_gated, axis=1)[:, None], 0.0)
    tl.debug_barrier()

    # Eq 8 backward for w_g (the transposed shift), then Eq 7: ∂L/∂g = Σ ∂L/∂w_g·(w_c - w_prev),
    # ∂L/∂w_prev = (1-g)·∂L/∂w_g; ∂L/∂w_c = g·∂L/∂w_g, whose softmax backward needs Σ w_c·∂L/∂w_g first.
    g_gate = tl.zeros([BLOCK_B], DTYPE)
    wc_dot_gwg = tl.zeros([BLOCK_B], DTYPE)
    for start in range(0, N, BLOCK_S):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_S)
        g_wg = _shifted(gws_ptr, shift_ptr, hrows, rows, slots, B, N, S, WRAP, True, DTYPE, BLOCK_B, BLOCK_S)
        w_content = tl.load(wc_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        w_prev = tl.load(wprev_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        g_gate += tl.sum(g_wg * (w_content - w_prev), axis=1)
        wc_dot_gwg += tl.sum(w_content * g_wg, axis=1)
        tl.store(gwprev_ptr + head_offs, (1 - gate[:, None]) * g_wg, mask=mask)
        tl.store(wg_ptr + offs, g_wg, mask=mask)
    tl.debug_barrier()

    # Eq 5-6 backward: ∂L/∂(β·K) = w_c·g·(∂L/∂w_g - Σ w_c·∂L/∂w_g); then through the smoothed cosine
    # K = k̂·M̂ (k̂ = k / sqrt(|k|²+ε), M̂ likewise): ∂K/∂k = (M̂ - K·k̂) / sqrt(|k|²+ε), ∂K/∂M = (k̂ - K·M̂) / sqrt(|M|²+ε).
    # These projections cancel exactly where K = ±1 (as the reference's autograd does), so a saturated
    # similarity gives an exactly zero gradient instead of a difference of two large rounded terms.
    g_beta = tl.zeros([BLOCK_B], DTYPE)
    g_key = tl.zeros([BLOCK_B, BLOCK_M], DTYPE)
    key_unit = div(key, key_norm[:, None], DTYPE)
    for start in range(0, N, BLOCK_N):
        slots, offs, head_offs, mask = _slot_tile(start, rows, hrows, B, N, BLOCK_N)
        logits, sim, mem_norm, mem, mem_offs, mem_mask = _content_logits(mem_ptr, key, key_norm, beta, rows, slots,
                                                                          B, N, M, EPS, DTYPE, BLOCK_M)
        if SAVED_CONTENT:
            w_content = tl.load(wc_ptr + head_offs, mask=mask, other=0.0).to(DTYPE)
        else:  # as computed into wc_ptr (recomputed: as cheap as a load beside the memory tile's)
            w_content = div(tl.exp(logits - c_max[:, None]), c_sum[:, None], DTYPE)
        g_wg = tl.load(wg_ptr + offs, mask=mask, other=0.0)
        g_logits = w_content * gate[:, None] * (g_wg - wc_dot_gwg[:, None])
        g_beta += tl.sum(g_logits * sim, axis=1)
        g_sim = beta[:, None] * g_logits
        mem_unit = div(mem, mem_norm[:, :, None], DTYPE)
        g_key += tl.sum(g_sim[:, :, None] * (mem_unit - sim[:, :, None] * key_unit[:, None, :]), axis=1)
        g_mem = div(g_sim, mem_norm, DTYPE)[:, :, None] * (key_unit[:, None, :] - sim[:, :, None] * mem_unit)
        previous = tl.load(gmem_ptr + mem_offs, mask=mem_mask, other=0.0).to(DTYPE)
        tl.store(gmem_ptr + mem_offs, tl.where(accumulate, previous, 0.0) + g_mem, mask=mem_mask)
    g_key = div(g_key, key_norm[:, None], DTYPE)

    store_head(gkey_ptr, g_key, rows, h, H, tl.arange(0, BLOCK_M), B, M)
    store_head(gshift_ptr, g_shift, rows, h, H, tl.arange(0, BLOCK_K), B, K)
    tl.store(gbeta_ptr + hrows, g_beta, mask=row_ok)
    tl.store(ggate_ptr + hrows, g_gate, mask=row_ok)
    tl.store(ggamma_ptr + hrows, g_gamma, mask=row_ok)


@triton.jit
def _address_fwd_kernel(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, tmp_ptr,
                        H, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    for h in range(H):
        address_head_fwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, w_ptr,
                         tmp_ptr, h, H, rows, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S,
                         False)


@triton.jit
def _address_bwd_kernel(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, gw_ptr,
                        gmem_ptr, gkey_ptr, gbeta_ptr, ggate_ptr, gshift_ptr, ggamma_ptr, gwprev_ptr, wc_ptr,
                        tmp_ptr, H, B, N, M, S, WRAP, TINY: tl.constexpr, EPS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    for h in range(H):  # heads in turn: each adds its ∂L/∂memory to the same tile, without atomics
        address_head_bwd(mem_ptr, key_ptr, beta_ptr, gate_ptr, shift_ptr, gamma_ptr, wprev_ptr, w_ptr, wc_ptr,
                         gw_ptr, gmem_ptr, gkey_ptr, gbeta_ptr, ggate_ptr, gshift_ptr, ggamma_ptr, gwprev_ptr, tmp_ptr,
                         h, H, rows, h > 0, B, N, M, S, WRAP, TINY, EPS, DTYPE, BLOCK_B, BLOCK_N, BLOCK_M, BLOCK_S,
                         BLOCK_K, False)


def address_forward(memory, heads, w_prev, *, eps, tiny):
    """Eq 5-9 for H heads in one launch: memory [B, N, M], heads (ReadHeads: key [B, H, M], beta/gate/gamma
    [B, H], shift [B, H, 2S+1]), w_prev [B, H, N] -> w [B, H, N]."""
    memory, key, beta, gate, shift, gamma, w_prev = contiguous(memory, *heads[:5], w_prev)
    (B, N, _), H, K = memory.shape, key.shape[1], shift.shape[-1]
    w = empty_output((B, H, N), memory)
    grid, args = launch(memory)
    _address_fwd_kernel[grid](memory, key, beta, gate, shift, gamma, w_prev, w, scratch(2, B, N, memory), H,
                              **args, **shift_args(N, (K - 1) // 2, tiny, eps), BLOCK_S=args["BLOCK_N"])
    return w


def address_backward(memory, heads, w_prev, w, grad_w, *, eps, tiny):
    """-> (d_memory, d_heads: ReadHeads, d_w_prev); recomputes K, w_c, w_g and w_s from the inputs."""
    inputs = contiguous(memory, *heads[:5], w_prev)
    (B, N, _), H, K = memory.shape, inputs[1].shape[1], inputs[4].shape[-1]
    d_memory, d_key, d_beta, d_gate, d_shift, d_gamma, d_w_prev = grads = [empty_output(t.shape, t) for t in inputs]
    grid, args = launch(inputs[0])
    w_content = scratch(H, B, N, memory)  # w_c, recomputed by the kernel ([B, H, N] workspace)
    _address_bwd_kernel[grid](*inputs, w.contiguous(), grad_w.contiguous(), *grads, w_content,
                              scratch(2, B, N, memory), H,
                              **args, **shift_args(N, (K - 1) // 2, tiny, eps), BLOCK_S=args["BLOCK_N"],
                              BLOCK_K=pow2(K))
    return d_memory, ReadHeads(d_key, d_beta, d_gate, d_shift, d_gamma), d_w_prev
