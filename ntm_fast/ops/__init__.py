"""The ops layer: the public op API and its input checks (api.py, checks.py), the reference that defines the
math (reference.py), the dispatch table (dispatch.py), the one autograd layer over every kernel backend
(autograd.py), the heads' parameter tuples and layout (heads.py), the C++/CUDA extension's loader and
launchers (extension.py) and the leaf module every backend shares (shared.py). docs/design.md draws the
layers."""
from .api import address, memory_step, read, write
from .dispatch import available_backends
from .heads import HeadLayout, ReadHeads, WriteHeads

__all__ = ["address", "read", "write", "memory_step", "ReadHeads", "WriteHeads", "HeadLayout",
           "available_backends"]
