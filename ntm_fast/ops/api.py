"""The public op API. Every op validates its inputs, then dispatches to a backend (dispatch.py).

Ops take *activated* head parameters (β > 0, 0 ≤ g ≤ 1, shift a distribution over -S..S, γ ≥ 1, erase in
[0, 1]); the model applies the activations. Shapes:

* ``address(memory [B,N,M], key [B,H,M], beta [B,H], gate [B,H], shift [B,H,2S+1], gamma [B,H],
  w_prev [B,H,N]) -> w [B,H,N]``
* ``read(memory [B,N,M], w [B,H,N]) -> [B,H,M]``
* ``write(memory [B,N,M], w [B,W,N], erase [B,W,M], add [B,W,M]) -> [B,N,M]``
* ``memory_step(memory, read_heads, write_heads, w_read_prev [B,R,N], w_write_prev [B,W,N])
  -> (reads [B,R,M], w_read [B,R,N], w_write [B,W,N], memory [B,N,M])``
"""
from __future__ import annotations

from . import checks
from .dispatch import resolved_ops
from .heads import ReadHeads, WriteHeads


def address(memory, key, beta, gate, shift, gamma, w_prev, *, backend: str = "auto"):
    """Content addressing, interpolation, circular shift and sharpening (Eq 5-9) -> w [B, H, N]."""
    checks.check_address("address", memory, key, beta, gate, shift, gamma, w_prev)
    return resolved_ops(backend, memory.device.type).address(memory, key, beta, gate, shift, gamma, w_prev)


def read(memory, w, *, backend: str = "auto"):
    """Read (Eq 2) -> [B, H, M]."""
    checks.check_read("read", memory, w)
    return resolved_ops(backend, memory.device.type).read(memory, w)


def write(memory, w, erase, add, *, backend: str = "auto"):
    """Erase/add write (Eq 3-4) with W heads: all erases, then all adds -> new memory [B, N, M]."""
    checks.check_write("write", memory, w, erase, add)
    return resolved_ops(backend, memory.device.type).write(memory, w, erase, add)


def memory_step(memory, read_heads: ReadHeads, write_heads: WriteHeads, w_read_prev, w_write_prev, *,
                backend: str = "auto"):
    """One step's whole memory interaction; every head addresses M_{t-1}, reads happen before the write.

    Returns (reads [B,R,M], w_read [B,R,N], w_write [B,W,N], new memory [B,N,M]).
    """
    checks.check_memory_step("memory_step", memory, read_heads, write_heads, w_read_prev, w_write_prev)
    return resolved_ops(backend, memory.device.type).memory_step(memory, read_heads, write_heads, w_read_prev,
                                                                 w_write_prev)
