"""Backend dispatch: one table, lazy loading, clear errors, and `auto` that falls back quietly.

A kernel backend is a module of plain forward/backward launchers (docs/design.md, "Adding a backend");
its loader wraps them in the one autograd layer (``autograd.KernelOps``), so that every entry of
``BACKENDS`` loads an object with the four ops ``address``, ``read``, ``write`` and ``memory_step`` (the
reference is such an object as it is: autograd differentiates it). Each entry says which device types it
serves and how to load it; loading either returns the ops or raises ``BackendUnavailable`` with the reason.

``resolve(name, device_type)`` is the one answer to "which backend runs this tensor". It memoises its
answers in a plain dict (not ``functools.lru_cache``, which torch.compile warns about on every compile),
and torch.compile takes its answer as a constant rather than tracing into a backend's loading.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from .autograd import KernelOps
from .shared import BackendUnavailable, triton_interpreted

log = logging.getLogger("ntm_fast")


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    devices: Callable[[], tuple]  # device types this backend serves right now ("cpu", "cuda")
    load: Callable[[], object]  # returns the ops (address, read, write, memory_step) or raises BackendUnavailable


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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tree = os.path.join(root, "kernels")
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


def _load_reference():
    from . import reference

    return reference  # differentiable by autograd as it is


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
    return KernelOps("triton", import_kernels())


def _load_cpp():
    from . import extension

    return KernelOps("cpp", extension.load_cpp())


def _load_cuda():
    from . import extension

    return KernelOps("cuda", extension.load_cuda())


BACKENDS = {
    "reference": Backend("reference", "pure PyTorch, the oracle", lambda: ("cpu", "cuda"), _load_reference),
    "triton": Backend("triton", "fused Triton kernels", _triton_devices, _load_triton),
    "cuda": Backend("cuda", "C++/CUDA extension kernels", lambda: ("cuda",), _load_cuda),
    "cpp": Backend("cpp", "fused C++ CPU kernels (OpenMP)", lambda: ("cpu",), _load_cpp),
}

# What `auto` tries, best first, per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}

_loaded = {}  # backend name -> (ops, None) or (None, why it cannot load): a failing build runs once
_resolved = {}  # (name, device type) -> backend name
_warned = set()


def load(name: str):
    """The ops of backend `name` (loaded once); BackendUnavailable if it cannot load here."""
    if name not in _loaded:
        try:
            _loaded[name] = BACKENDS[name].load(), None
        except BackendUnavailable as err:
            _loaded[name] = None, str(err)
        except ImportError as err:
            _loaded[name] = None, f"import failed: {err}"
    found, reason = _loaded[name]
    if found is None:
        raise BackendUnavailable(reason)
    return found


def unavailable_reason(name: str, device_type: str | None = None) -> str | None:
    """None if backend `name` can run (on `device_type`, if given); otherwise why not."""
    backend = BACKENDS[name]
    if device_type is not None and device_type not in backend.devices():
        if not backend.devices():  # it runs on no device here: loading it says why
            try:
                load(name)
            except BackendUnavailable as err:
                return str(err)
            return "it runs on no device of this machine"
        return f"it runs on {', '.join(backend.devices())} tensors, not {device_type}"
    try:
        load(name)
    except BackendUnavailable as err:
        return str(err)
    return None


def available_backends(device=None) -> list:
    """Names of the backends that load here (and serve `device`'s type, if given), best first."""
    device_type = None if device is None else torch.device(device).type
    return [name for name in BACKENDS if unavailable_reason(name, device_type) is None]


def _resolve_uncached(name: str, device_type: str) -> str:
    if name == "auto":
        for candidate in AUTO_ORDER.get(device_type, ("reference",)):
            reason = unavailable_reason(candidate, device_type)
            if reason is None:
                return candidate
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
    return name


# torch.compile runs this eagerly and keeps its answer as a constant, instead of tracing into backend loading.
@torch.compiler.assume_constant_result
def resolve(name: str, device_type: str) -> str:
    """The backend that runs `device_type` tensors when `name` is asked for: 'auto' falls back (logging once
    why a better one cannot run), a named one that cannot run raises ValueError saying why."""
    key = (name, device_type)
    found = _resolved.get(key)
    if found is None:
        found = _resolved[key] = _resolve_uncached(name, device_type)
    return found


def resolved_ops(name: str, device_type: str):
    """The ops that run `device_type` tensors when backend `name` is asked for (see `resolve`)."""
    return load(resolve(name, device_type))


def forget():
    """Drop every loaded backend and resolved name (after BACKENDS changed, e.g. in tests)."""
    _loaded.clear()
    _resolved.clear()
