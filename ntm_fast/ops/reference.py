"""The reference path: pure, vectorized PyTorch. It *defines* the math every backend computes.

Everything here is differentiable by autograd, works on any device and in float32 or float64, and has
no Python loop over batch items or memory slots (the loops are over the 2S+1 shift offsets, a single
gather, and over the write heads in the erase product). Equation numbers are those of Graves, Wayne & Danihelka (2014),
arXiv:1410.5401.

Shapes: B batch, H heads in one call, N memory slots, M slot width, K = 2S+1 shift offsets.

Numerical conventions (kernels reproduce them exactly):

* Cosine similarity (Eq 6) is smoothed as ``k·M[i] / (sqrt(‖k‖² + ε) · sqrt(‖M[i]‖² + ε))`` with
  ``ε = COSINE_EPS``: a zero key or an all-zero memory row gives similarity 0 with finite gradients.
* Sharpening (Eq 9) is computed as ``softmax_i(γ · log(max(w_s[i], tiny)))`` where ``tiny`` is the
  smallest normal number of the dtype (``sharpen_floor``). This equals ``w_s^γ / Σ w_s^γ`` but cannot
  overflow for γ up to 50, and its gradient with respect to γ stays finite at exact zeros (d/dγ 0^γ is
  where naive code makes NaN: ``0 · log 0``).
* Shift (Eq 8): ``w_s[i] = Σ_{j=-S..S} s[j+S] · w_g[(i - j) mod N]``; shift +1 moves focus from slot i
  to slot i+1.
"""
from __future__ import annotations

import torch

COSINE_EPS = 1e-8  # ε of the smoothed cosine (Eq 6); every backend receives it from here


def sharpen_floor(dtype: torch.dtype) -> float:
    """The clamp of the sharpening log (Eq 9): the smallest normal number of `dtype`; every backend receives
    it from here."""
    return torch.finfo(dtype).tiny


def cosine_similarity(memory: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Smoothed cosine similarity (Eq 6). memory [B, N, M], key [B, H, M] -> [B, H, N]."""
    dot = torch.einsum("bhm,bnm->bhn", key, memory)
    key_norm = torch.sqrt((key * key).sum(-1) + COSINE_EPS)  # [B, H]
    mem_norm = torch.sqrt((memory * memory).sum(-1) + COSINE_EPS)  # [B, N]
    return dot / (key_norm.unsqueeze(-1) * mem_norm.unsqueeze(1))


def content_weights(memory, key, beta):
    """Content addressing (Eq 5): softmax over slots of β · K. -> [B, H, N]."""
    return torch.softmax(beta.unsqueeze(-1) * cosine_similarity(memory, key), dim=-1)


def interpolate(w_content, w_prev, gate):
    """Interpolation (Eq 7): g · w_c + (1 - g) · w_prev. -> [B, H, N]."""
    g = gate.unsqueeze(-1)
    return g * w_content + (1 - g) * w_prev


def shift_indices(num_slots: int, shift_range: int, device) -> torch.Tensor:
    """[K, N] long tensor: row j+S holds (i - j) mod N for every slot i (Eq 8)."""
    offsets = torch.arange(-shift_range, shift_range + 1, device=device)
    slots = torch.arange(num_slots, device=device)
    return (slots.unsqueeze(0) - offsets.unsqueeze(1)) % num_slots


def circular_shift(w_gated, shift):
    """Circular convolution (Eq 8) in O(N·K): w_gated [B, H, N], shift [B, H, 2S+1] -> [B, H, N]."""
    num_slots = w_gated.shape[-1]
    shift_range = (shift.shape[-1] - 1) // 2
    idx = shift_indices(num_slots, shift_range, w_gated.device)  # [K, N]
    shifted = w_gated[..., idx]  # [B, H, K, N]: shifted[..., j+S, i] = w_g[(i - j) mod N]
    return torch.einsum("bhk,bhkn->bhn", shift, shifted)


def sharpen(w_shifted, gamma):
    """Sharpening (Eq 9) as softmax(γ · log w_s); see the module docstring. -> [B, H, N]."""
    log_w = torch.log(torch.clamp_min(w_shifted, sharpen_floor(w_shifted.dtype)))
    return torch.softmax(gamma.unsqueeze(-1) * log_w, dim=-1)


def address(memory, key, beta, gate, shift, gamma, w_prev):
    """The whole addressing pipeline (Eq 5-9) for H heads against one memory.

    memory [B, N, M]; key [B, H, M]; beta, gate, gamma [B, H]; shift [B, H, 2S+1]; w_prev [B, H, N].
    Returns the weighting w [B, H, N].
    """
    w_c = content_weights(memory, key, beta)
    w_g = interpolate(w_c, w_prev, gate)
    w_s = circular_shift(w_g, shift)
    return sharpen(w_s, gamma)


def read(memory, w):
    """Read (Eq 2): r_h = Σ_i w_h[i] · M[i]. memory [B, N, M], w [B, H, N] -> [B, H, M]."""
    return torch.einsum("bhn,bnm->bhm", w, memory)


def write(memory, w, erase, add):
    """Erase then add (Eq 3-4) for W write heads: all erases, then all adds.

    M_t = M_{t-1} ⊙ Π_h (1 - w_h e_hᵀ) + Σ_h w_h a_hᵀ.
    memory [B, N, M]; w [B, W, N]; erase, add [B, W, M]. Returns the new memory [B, N, M].
    """
    # Π_h as a running product over the W heads, not torch.prod: autograd then gives each head's factor the
    # product of the other heads' factors, formed directly as the kernels do, whereas torch.prod's backward
    # divides the product by the factor and so spreads one head's NaN/Inf into every head's gradient.
    factors = 1 - w.unsqueeze(-1) * erase.unsqueeze(-2)  # [B, W, N, M]
    keep = factors[:, 0]
    for h in range(1, factors.shape[1]):
        keep = keep * factors[:, h]
    return memory * keep + torch.einsum("bwn,bwm->bnm", w, add)


def memory_step(memory, read_heads, write_heads, w_read_prev, w_write_prev):
    """One time step's memory interaction: every head addressed against M_{t-1}, reads, then write.

    Returns (reads [B, R, M], w_read [B, R, N], w_write [B, W, N], new memory [B, N, M]).
    """
    num_read = w_read_prev.shape[1]
    cat = lambda a, b: torch.cat([a, b], dim=1)  # noqa: E731 - read heads first, then write heads
    w_all = address(
        memory,
        cat(read_heads.key, write_heads.key),
        cat(read_heads.beta, write_heads.beta),
        cat(read_heads.gate, write_heads.gate),
        cat(read_heads.shift, write_heads.shift),
        cat(read_heads.gamma, write_heads.gamma),
        cat(w_read_prev, w_write_prev),
    )
    w_read, w_write = w_all[:, :num_read], w_all[:, num_read:]
    reads = read(memory, w_read)
    new_memory = write(memory, w_write, write_heads.erase, write_heads.add)
    return reads, w_read, w_write, new_memory
