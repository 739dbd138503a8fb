"""Backend dispatch: one table, lazy loading, clear errors, and `auto` that falls back quietly.

A backend is any object with the four ops ``address``, ``read``, ``write`` and ``memory_step`` taking
the op API's (already validated) arguments. Each entry of ``BACKENDS`` says which device types it serves
and how to load it; loading either returns that object or raises ``BackendUnavailable`` with the reason.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("ntm_fast")


class BackendUnavailable(RuntimeError):
    """Raised by a loader: the backend cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    devices: Callable[[], tuple]  # device types this backend serves right now ("cpu", "cuda")
    load: Callable[[], object]  # returns the ops object or raises BackendUnavailable


def _load_reference():
    from . import reference

    return reference


def import_kernels():
    """Import the Triton kernels as ``ntm_fast.kernels``, installed or from a source checkout.

    An installed package maps the top-level ``kernels/`` folder to ``ntm_fast.kernels``; when the
    package runs from the source tree, the folder sits beside ``ntm_fast/`` and is loaded under that name.
    """
    try:
        return importlib.import_module("ntm_fast.kernels")
    except ModuleNotFoundError as err:
        if err.name != "ntm_fast.kernels":
            raise
    tree = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(tree, "__init__.py")
    if not os.path.isfile(init):
        raise ModuleNotFoundError("ntm_fast.kernels is neither installed nor beside the source tree")
    spec = importlib.util.spec_from_file_location("ntm_fast.kernels", init, submodule_search_locations=[tree])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ntm_fast.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["ntm_fast.kernels"]
        raise
    return module


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_devices():
    devices = ("cuda",) if torch.cuda.is_available() else ()
    return devices + (("cpu",) if triton_interpreted() else ())


def _load_triton():
    try:
        import triton  # noqa: F401
    except ImportError as err:
        raise BackendUnavailable(f"triton is not installed ({err})") from None
    if not torch.cuda.is_available() and not triton_interpreted():
        raise BackendUnavailable("no CUDA GPU is visible and TRITON_INTERPRET=1 is not set")
    return import_kernels()


def _load_cpp():
    from . import extension

    return extension.load_cpp()


def _load_cuda():
    from . import extension

    return extension.load_cuda()


BACKENDS = {
    "reference": Backend("reference", "pure PyTorch, the oracle", lambda: ("cpu", "cuda"), _load_reference),
    "triton": Backend("triton", "fused Triton kernels", _triton_devices, _load_triton),
    "cuda": Backend("cuda", "C++/CUDA extension kernels", lambda: ("cuda",), _load_cuda),
    "cpp": Backend("cpp", "fused C++ CPU kernels (OpenMP)", lambda: ("cpu",), _load_cpp),
}

# What `auto` tries, best first, per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}


@functools.lru_cache(maxsize=None)
def _try_load(name):
    """(ops, None) or (None, reason); cached, so a failing build is attempted once per process."""
    try:
        return BACKENDS[name].load(), None
    except BackendUnavailable as err:
        return None, str(err)
    except ImportError as err:
        return None, f"import failed: {err}"


def unavailable_reason(name: str, device_type: str | None = None) -> str | None:
    """None if backend `name` can run (on `device_type`, if given); otherwise why not."""
    backend = BACKENDS[name]
    if device_type is not None and device_type not in backend.devices():
        if not backend.devices():  # it runs on no device here: loading it says why
            return _try_load(name)[1] or "it runs on no device of this machine"
        return f"it runs on {', '.join(backend.devices())} tensors, not {device_type}"
    return _try_load(name)[1]


def available_backends(device=None) -> list:
    """Names of the backends that load here (and serve `device`'s type, if given), best first."""
    device_type = None if device is None else torch.device(device).type
    return [name for name in BACKENDS if unavailable_reason(name, device_type) is None]


_warned = set()


def resolve(name: str, device: torch.device):
    """The ops object for backend `name` on `device`. 'auto' falls back (logging once); a named one raises."""
    device_type = device.type
    if name == "auto":
        for candidate in AUTO_ORDER.get(device_type, ("reference",)):
            reason = unavailable_reason(candidate, device_type)
            if reason is None:
                return _try_load(candidate)[0]
            if candidate != "reference" and (candidate, device_type) not in _warned:
                _warned.add((candidate, device_type))
                log.warning("ntm_fast: backend %r unavailable for %s tensors (%s); falling back", candidate,
                            device_type, reason)
        raise ValueError(f"no backend can run on {device_type} tensors")
    if name not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; known: auto, {', '.join(BACKENDS)}; "
            f"available here: {', '.join(available_backends())}"
        )
    reason = unavailable_reason(name, device_type)
    if reason is not None:
        raise ValueError(
            f"backend {name!r} is unavailable for {device_type} tensors: {reason}. "
            f"Available for {device_type}: {', '.join(available_backends(device_type))}"
        )
    return _try_load(name)[0]


# ----------------------------------------------------------------------------------------------------
# Output allocation for kernel backends. Tests switch on poisoning so that every output buffer starts as
# NaN: an element a kernel forgets to write then fails the comparison with the reference.
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
