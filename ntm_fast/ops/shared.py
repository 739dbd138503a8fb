"""What every backend shares (a leaf module: it imports nothing from the project).

* ``BackendUnavailable``: raised by a backend's loader; the message says why it cannot run here.
* ``empty_output``: the allocation of every kernel output. While ``poisoned_outputs()`` is active (the tests
  turn it on) outputs start as NaN, so an element a kernel forgets to write fails the comparison with the
  reference.
* ``is_slot_minor``: whether a memory is in the C++ CPU kernels' layout.
* ``triton_interpreted``: whether Triton kernels run under the interpreter (``TRITON_INTERPRET=1``), which
  is how they run on CPU tensors.
"""
from __future__ import annotations

import os

import torch


def is_slot_minor(x: torch.Tensor) -> bool:
    """A CPU [B, N, M] memory stored as [B, M, N] (strides [N*M, 1, N]): the C++ kernels' own layout."""
    return x.device.type == "cpu" and x.dim() == 3 and not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


class BackendUnavailable(RuntimeError):
    """Raised by a loader: the backend cannot run here; the message says why."""


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_poison_outputs = False


def empty_output(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """torch.empty for a kernel's output (NaN-filled while `poisoned_outputs()` is active)."""
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if _poison_outputs:
        out.fill_(float("nan"))
    return out


class poisoned_outputs:
    """Context manager: kernel outputs allocated through `empty_output` start as NaN."""

    def __enter__(self):
        global _poison_outputs
        self._saved, _poison_outputs = _poison_outputs, True
        return self

    def __exit__(self, *exc):
        global _poison_outputs
        _poison_outputs = self._saved
        return False
