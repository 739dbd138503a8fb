"""ntm_fast: a Neural Turing Machine for PyTorch whose memory interaction runs as fused kernels.

Layers, each importing only the ones below it (docs/design.md): ``tools`` (CLI, training, tasks, bench,
profiling, plots, model zoo) -> ``model`` (NTM, NTMCell, the fused step and sequence) -> ``ops`` (op API,
reference, dispatch, autograd) -> backends (``ntm_fast.kernels`` for Triton, the C++/CUDA extension).
"""
from .ops import ReadHeads, WriteHeads, address, available_backends, memory_step, read, write

__version__ = "0.1.0"

__all__ = ["available_backends", "address", "read", "write", "memory_step", "ReadHeads", "WriteHeads",
           "NTM", "NTMCell", "__version__"]


def __getattr__(name):
    # The model pulls in torch.nn; keep `import ntm_fast` light for kernel users.
    if name in ("NTM", "NTMCell"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'ntm_fast' has no attribute {name!r}")
