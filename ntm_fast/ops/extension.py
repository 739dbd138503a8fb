"""The optional C++/CUDA extension ``ntm_fast._C``: backends ``cpp`` (CPU) and ``cuda``.

Loading. A ``ntm_fast._C`` built ahead of time (``NTM_FAST_BUILD_EXT=1 pip install --no-build-isolation .``)
is used when it imports. Otherwise the sources in ``csrc/`` (shipped as ``ntm_fast/csrc`` when installed)
are built on first use with ``torch.utils.cpp_extension.load`` (ninja) into a directory under torch's
extension root (``TORCH_EXTENSIONS_DIR``) keyed by the sources, flags and versions, so later processes load
the cached build. A failed build raises ``BackendUnavailable`` with the compiler's first errors: ``auto``
then falls back to the reference with one warning, and a backend asked for by name raises that reason.

Launchers. This module's functions are the backends' plain forward/backward launchers (the protocol is in
ops/autograd.py, which supplies the autograd): they allocate the outputs (``shared.empty_output``) and call
the kernels, which fill them. Besides the four ops, ``step_forward``/``step_backward`` run one whole NTM
time step and ``sequence_forward``/``sequence_backward`` a whole sequence (csrc/ntm_cell.cpp).
"""
import functools
import glob
import hashlib
import importlib
import os
import subprocess
import sys

import torch
from torch import Tensor

from .heads import HeadLayout, ReadHeads, WriteHeads
from .shared import BackendUnavailable, empty_output, is_slot_minor

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ntm_fast/
# Installed: csrc/ ships inside the package; from a source checkout it sits beside ntm_fast/.
CSRC = next((d for d in (os.path.join(_PACKAGE_DIR, "csrc"), os.path.join(os.path.dirname(_PACKAGE_DIR), "csrc"))
             if os.path.isdir(d)), os.path.join(_PACKAGE_DIR, "csrc"))
CPU_SOURCES = ("ntm_cpu.cpp", "ntm_cell.cpp", "bindings.cpp")
CUDA_SOURCES = ("ntm_cuda.cpp", "ntm_cuda_kernels.cu")
# -march=native: the extension is built on (and for) the machine that runs it. OpenMP for at::parallel_for.
# -fno-trapping-math (no FP-exception semantics; IEEE results unchanged) lets GCC vectorize the selects in the
# kernels' exp/log loops; -fno-math-errno (sqrt sets no errno; results unchanged) lets it vectorize sqrt.
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def sources(with_cuda: bool) -> list:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [os.path.join(CSRC, name) for name in names]


def cxx_flags(with_cuda: bool) -> list:
    return CXX_FLAGS + (["-DNTM_WITH_CUDA"] if with_cuda else [])


def _error_summary(err: Exception) -> str:
    """The compiler's first error lines (or the exception's last line), short enough for one warning."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]  # compiler diagnostics, not the echoed commands
    summary = "; ".join((errors or lines[-1:])[:3])
    return (summary[:600] + " ...") if len(summary) > 600 else summary


def build(with_cuda: bool):
    """Build (or load the cached build of) the extension from ``CSRC``; BackendUnavailable if that fails."""
    from torch.utils import cpp_extension

    if with_cuda and cpp_extension.CUDA_HOME is None:
        raise BackendUnavailable("no CUDA toolkit found (set CUDA_HOME) to build the CUDA kernels")
    name = "ntm_fast_C_cuda" if with_cuda else "ntm_fast_C"
    srcs, flags = sources(with_cuda), cxx_flags(with_cuda)
    missing = [path for path in srcs if not os.path.isfile(path)]
    if missing:
        raise BackendUnavailable(f"the extension's sources are missing: {', '.join(missing)}")
    # Everything the compile command depends on, so two interpreters or torch installs never share a build.
    key = hashlib.sha256(repr((srcs, flags, NVCC_FLAGS, torch.__version__, torch.__file__, sys.executable,
                               sys.version, os.environ.get("CXX"))).encode())
    for path in srcs + sorted(glob.glob(os.path.join(CSRC, "*.h"))):
        with open(path, "rb") as f:
            key.update(f.read())
    build_dir = os.path.join(cpp_extension.get_default_build_root(), f"{name}_{key.hexdigest()[:16]}")
    os.makedirs(build_dir, exist_ok=True)
    if not os.path.exists(os.path.join(build_dir, name + ".so")):
        print(f"ntm_fast: building the {'C++/CUDA' if with_cuda else 'C++'} extension (once; about 30-60 s) in "
              f"{build_dir}", file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(name, srcs, extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                  extra_cuda_cflags=NVCC_FLAGS, build_directory=build_dir, verbose=False)
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as err:
        raise BackendUnavailable(f"building the extension failed: {_error_summary(err)}") from None


@functools.lru_cache(maxsize=None)
def _module(with_cuda: bool):
    """The prebuilt ntm_fast._C if it imports (and has CUDA when asked for), else the on-demand build."""
    try:
        _C = importlib.import_module("ntm_fast._C")  # the compiled extension, if built ahead of time

        if _C.with_cuda or not with_cuda:
            return _C
    except ImportError:
        pass  # not built ahead of time, or built for another torch: build here
    return build(with_cuda)


def _kernels(t: Tensor):
    return _module(t.device.type == "cuda")


def _contiguous(tensors):
    return [t.contiguous() for t in tensors]


def _like(tensors, memory):
    return [empty_output(t.shape, memory) for t in tensors]


# memory_step's CPU kernels return new memory slot-minor: a [B, N, M] view of [B, M, N] storage (strides
# [N*M, 1, N]), the layout they compute in, and take memory and its gradient in that layout or row-major.
# So in a recurrence only the first step's memory is transposed (csrc/ntm_cpu.cpp says more).
# The C++ bindings tell the layouts apart (kernel_memory in csrc/ntm.h); here outputs are allocated.
def _new_memory(memory: Tensor, slot_minor: bool) -> Tensor:
    """An uninitialised [B, N, M] output for a memory (or its gradient), slot-minor or row-major."""
    B, N, M = memory.shape
    return empty_output((B, M, N), memory).transpose(1, 2) if slot_minor else empty_output((B, N, M), memory)


# The kernels take a head's addressing parameters and previous weighting as one list
# [key, beta, gate, shift, gamma, w_prev]; write heads add [erase, add] as separate arguments.
def _address_args(heads: ReadHeads, w_prev: Tensor):
    return _contiguous([*heads[:5], w_prev])


# --- address (Eq 5-9), read (Eq 2), write (Eq 3-4) -------------------------------------------------------
def address_forward(memory, heads: ReadHeads, w_prev, *, eps, tiny):
    memory = memory.contiguous()
    w = empty_output(w_prev.shape, memory)
    _kernels(memory).address_forward(memory, _address_args(heads, w_prev), w, **_constants(eps, tiny))
    return w


def address_backward(memory, heads: ReadHeads, w_prev, w, grad_w, *, eps, tiny):
    memory, args = memory.contiguous(), _address_args(heads, w_prev)
    d_memory, *d_args = _like([memory, *args], memory)
    _kernels(memory).address_backward(memory, args, grad_w.contiguous(), d_memory, d_args, **_constants(eps, tiny))
    return d_memory, ReadHeads(*d_args[:5]), d_args[5]


def read_forward(memory, w):
    memory, w = _contiguous([memory, w])
    reads = empty_output((w.shape[0], w.shape[1], memory.shape[2]), memory)
    _kernels(memory).read_forward(memory, w, reads)
    return reads


def read_backward(memory, w, grad_reads):
    memory, w, grad_reads = _contiguous([memory, w, grad_reads])
    d_memory, d_w = _like([memory, w], memory)
    _kernels(memory).read_backward(memory, w, grad_reads, d_memory, d_w)
    return d_memory, d_w


def write_forward(memory, w, erase, add):
    memory, w, erase, add = _contiguous([memory, w, erase, add])
    new_memory = empty_output(memory.shape, memory)
    _kernels(memory).write_forward(memory, w, erase, add, new_memory)
    return new_memory


def write_backward(memory, w, erase, add, grad_memory):
    inputs = _contiguous([memory, w, erase, add])
    d_inputs = _like(inputs, memory)
    _kernels(memory).write_backward(*inputs, grad_memory.contiguous(), *d_inputs)
    return tuple(d_inputs)


# --- memory_step: every head addresses M_{t-1}, then the reads and the write -----------------------------
def memory_step_forward(memory, read_heads: ReadHeads, write_heads: WriteHeads, w_read_prev, w_write_prev, *,
                        eps, tiny):
    read_args, write_args = _address_args(read_heads, w_read_prev), _address_args(write_heads, w_write_prev)
    erase, add = _contiguous([write_heads.erase, write_heads.add])
    (B, R, M), N = read_heads.key.shape, memory.shape[1]
    reads = empty_output((B, R, M), memory)
    w_read, w_write = _like([w_read_prev, w_write_prev], memory)
    new_memory = _new_memory(memory, memory.device.type == "cpu")
    _kernels(memory).memory_step_forward(memory, read_args, write_args, erase, add, reads, w_read, w_write,
                                         new_memory, **_constants(eps, tiny))
    return reads, w_read, w_write, new_memory


def memory_step_backward(memory, read_heads: ReadHeads, write_heads: WriteHeads, w_read_prev, w_write_prev,
                         w_read, w_write, grad_reads, grad_w_read, grad_w_write, grad_memory, *, eps, tiny):
    # w_read and w_write are not needed: the kernels recompute the addressing from the inputs.
    read_args, write_args = _address_args(read_heads, w_read_prev), _address_args(write_heads, w_write_prev)
    erase, add = _contiguous([write_heads.erase, write_heads.add])
    d_memory = _new_memory(memory, is_slot_minor(memory))  # in the memory's own layout
    d_read, d_write, (d_erase, d_add) = _like(read_args, memory), _like(write_args, memory), _like([erase, add],
                                                                                                    memory)
    _kernels(memory).memory_step_backward(memory, read_args, write_args, erase, add,
                                          *_contiguous([grad_reads, grad_w_read, grad_w_write]), grad_memory,
                                          d_memory, d_read, d_write, d_erase, d_add, **_constants(eps, tiny))
    return (d_memory, ReadHeads(*d_read[:5]), WriteHeads(*d_write[:5], d_erase, d_add), d_read[5], d_write[5])


# --- one whole time step and a whole sequence (CPU; csrc/ntm_cell.cpp) -----------------------------------
FUSED_STEP_DEVICES = FUSED_SEQUENCE_DEVICES = ("cpu",)  # where the model uses the launchers below


def step_forward(x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, weights, layout: HeadLayout, *,
                 eps, tiny):
    """weights: (W_ih, b_ih, W_hh, b_hh, W_heads, b_heads, W_out, b_out), W_hh/b_hh None without an LSTM.
    Returns ((logits, h, c, reads, w_read, w_write, new_memory), tensors saved for step_backward)."""
    lstm = h_prev is not None
    x, reads_prev = x.contiguous(), reads_prev.contiguous()
    if lstm:
        h_prev, c_prev = h_prev.contiguous(), c_prev.contiguous()
    W_ih, _, W_hh, _, W_heads, _, W_out, _ = weights
    logits, h, c, reads, w_read, w_write, new_memory, u, tanh_c, gates, p, hr, *heads = _kernels(x).step_forward(
        x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, *weights, list(layout.sizes),
        **_constants(eps, tiny))
    saved = (memory, w_read_prev, w_write_prev, u, h_prev, c_prev, h, tanh_c, gates, p, hr, W_ih, W_hh, W_heads,
             W_out, *heads)
    return (logits, h, c, reads, w_read, w_write, new_memory), saved


def step_backward(saved, grads, layout: HeadLayout, *, eps, tiny):
    """saved: step_forward's; grads: of its seven outputs. Returns (d_u, d_h_prev, d_c_prev, d_w_read_prev,
    d_w_write_prev, d_memory_prev, dW_ih, db_ih, dW_hh, dW_heads, db_heads, dW_out, db_out)."""
    memory, w_read_prev, w_write_prev, u, h_prev, c_prev, h, tanh_c, gates, p, hr, W_ih, W_hh, W_heads, W_out, \
        *heads = saved
    d_logits, d_h, d_c, d_reads, d_w_read, d_w_write, d_memory = grads
    return _kernels(h).step_backward(
        d_logits.contiguous(), d_h, None if d_c is None else d_c.contiguous(), d_reads, d_w_read, d_w_write,
        d_memory, memory, w_read_prev, w_write_prev, heads, u, h_prev, c_prev, h, tanh_c, gates, p, hr, W_ih, W_hh,
        W_heads, W_out, list(layout.sizes), **_constants(eps, tiny))


def sequence_forward(x, h0, c0, reads0, w_read0, w_write0, memory0, weights, layout: HeadLayout, keep_tape, *,
                     eps, tiny):
    """x [T, B, X] and the initial state -> (logits [T, B, Y], tape): one C++ call, one batch chunk per
    thread through every step. keep_tape: keep what sequence_backward needs (else freed as it goes)."""
    # keep_tape last and positional: tests/test_fused_cell.py reads it there.
    return _kernels(x).sequence_forward(x, h0, c0, reads0, w_read0, w_write0, memory0, *weights, list(layout.sizes),
                                        eps, tiny, keep_tape)


def sequence_backward(tape, d_logits, weights):
    """weights: (W_ih, W_hh, W_heads, W_out). Returns (d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0,
    d_memory0, dW_ih, db_ih, dW_hh, dW_heads, db_heads, dW_out, db_out)."""
    return _kernels(d_logits).sequence_backward(tape, d_logits, *weights)


def _constants(eps: float, tiny: float) -> dict:
    """ε (Eq 6) and the sharpening floor (Eq 9) under the bindings' argument names."""
    return dict(cosine_eps=eps, sharpen_floor=tiny)


def load_cpp():
    """The ``cpp`` backend's launchers (building the extension on first use); BackendUnavailable if it can't."""
    _module(False)
    return sys.modules[__name__]


def load_cuda():
    """The ``cuda`` backend's launchers; BackendUnavailable without a CUDA build of torch, a GPU or a toolkit."""
    if torch.version.cuda is None:
        raise BackendUnavailable(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU is visible")
    _module(True)
    return sys.modules[__name__]
