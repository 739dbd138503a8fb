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
from .dispatch import load, resolve
from .heads import ReadHeads, WriteHeads


def _backend(op: str, backend: str, memory):
    """The ops that run `backend` on memory's device and compute in memory's dtype; call after the op's input
    checks. 'auto' whose pick lacks the dtype (cpp and float16) runs the reference instead; a named backend
    that lacks it is a TypeError (checks.check_backend_dtype)."""
    name = resolve(backend, memory.device.type)
    if backend == "auto" and memory.dtype not in checks.BACKEND_DTYPES.get(name, (memory.dtype,)):
        name = "reference"
    checks.check_backend_dtype(op, name, backend, "memory", memory)
    return load(name)


def address(memory, key, beta, gate, shift, gamma, w_prev, *, backend: str = "auto"):
    """Content addressing, interpolation, circular shift and sharpening (Eq 5-9) -> w [B, H, N]."""
    checks.check_address("address", memory, key, beta, gate, shift, gamma, w_prev)
    return _backend("address", backend, memory).address(memory, key, beta, gate, shift, gamma, w_prev)


def read(memory, w, *, backend: str = "auto"):
    """Read (Eq 2) -> [B, H, M]."""
    checks.check_read("read", memory, w)
    return _backend("read", backend, memory).read(memory, w)


def write(memory, w, erase, add, *, backend: str = "auto"):
    """Erase/add write (Eq 3-4) with W heads: all erases, then all adds -> new memory [B, N, M]."""
    checks.check_write("write", memory, w, erase, add)
    return _backend("write", backend, memory).write(memory, w, erase, add)


def memory_step(memory, read_heads: ReadHeads, write_heads: WriteHeads, w_read_prev, w_write_prev, *,
                backend: str = "auto"):
    """One step's whole memory interaction; every head addresses M_{t-1}, reads happen before the write.

    Returns (reads [B,R,M], w_read [B,R,N], w_write [B,W,N], new memory [B,N,M]).
    """
    checks.check_memory_step("memory_step", memory, read_heads, write_heads, w_read_prev, w_write_prev)
    return _backend("memory_step", backend, memory).memory_step(memory, read_heads, write_heads, w_read_prev, w_write_prev)
