"""The public op API. Every op validates its inputs, then dispatches to a backend (see backends.py).

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

from typing import NamedTuple

import torch

from . import checks
from .backends import AUTO_ORDER, resolve, unavailable_reason


class ReadHeads(NamedTuple):
    """Activated parameters of R read heads: key [B,R,M]; beta, gate, gamma [B,R]; shift [B,R,2S+1]."""

    key: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor


class WriteHeads(NamedTuple):
    """Activated parameters of W write heads: as ReadHeads, plus erase and add [B,W,M]."""

    key: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor
    erase: torch.Tensor
    add: torch.Tensor


def _backend(op: str, backend: str, memory: torch.Tensor):
    """The ops object that runs `backend` on memory's device and computes in memory's dtype; call after the
    op's input checks. 'auto' whose pick lacks the dtype (cpp and float16) runs the reference instead; a
    named backend that lacks it is a TypeError (checks.check_backend_dtype)."""
    impl = resolve(backend, memory.device)
    name = backend
    if backend == "auto":  # the first of AUTO_ORDER that runs here: the one `resolve` just returned
        name = next(c for c in AUTO_ORDER.get(memory.device.type, ("reference",))
                    if unavailable_reason(c, memory.device.type) is None)
        if memory.dtype not in checks.BACKEND_DTYPES.get(name, (memory.dtype,)):
            name, impl = "reference", resolve("reference", memory.device)
    checks.check_backend_dtype(op, name, backend, "memory", memory)
    return impl


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
