"""The optional C++/CUDA extension ``ntm_fast._C``: backends ``cpp`` (CPU) and ``cuda``.

Loading. A ``ntm_fast._C`` built ahead of time (``NTM_FAST_BUILD_EXT=1 pip install --no-build-isolation .``)
is used when it imports. Otherwise the sources in ``csrc/`` (shipped as ``ntm_fast/csrc`` when installed)
are built on first use with ``torch.utils.cpp_extension.load`` (ninja) into a directory under torch's
extension root (``TORCH_EXTENSIONS_DIR``) keyed by the sources, flags and versions, so later processes load
the cached build. A failed build raises ``BackendUnavailable`` with the compiler's first errors: ``auto``
then falls back to the reference with one warning, and a backend asked for by name raises that reason.

Ops. Each op is a ``torch.library`` custom op (``ntm_fast::address``, ``ntm_fast::read``,
``ntm_fast::write``, ``ntm_fast::memory_step``) with a fake (meta) implementation, and an autograd formula
that saves the op's inputs and calls a second custom op (``ntm_fast::address_backward`` ...) running the
fused backward kernel, which recomputes the addressing intermediates. ``torch.compile`` sees both as opaque
ops. Outputs are allocated here (``backends.empty_output``) and filled by the kernels. Eager calls (not under
``torch.compile``) skip the custom-op dispatch and run the same implementations through a plain
``torch.autograd.Function`` (``_Fused``): at small batches that dispatch cost more than the kernels.
"""
import functools
import glob
import hashlib
import os
import subprocess
import sys
import types
from typing import List, Tuple

import torch
from torch import Tensor

from . import reference
from .backends import BackendUnavailable, empty_output

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
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


def sources(with_cuda: bool) -> List[str]:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [os.path.join(CSRC, name) for name in names]


def cxx_flags(with_cuda: bool) -> List[str]:
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
        from . import _C

        if _C.with_cuda or not with_cuda:
            return _C
    except ImportError:
        pass  # not built ahead of time, or built for another torch: build here
    return build(with_cuda)


def _kernels(memory: Tensor):
    return _module(memory.device.type == "cuda")


def _contiguous(tensors):
    return [t.contiguous() for t in tensors]


def _like(tensors, memory):
    return [empty_output(t.shape, memory) for t in tensors]


def _numerics(dtype: torch.dtype) -> dict:
    """The reference's ε (Eq 6) and sharpening floor (Eq 9) for `dtype`, as the addressing kernels take them."""
    return dict(cosine_eps=reference.COSINE_EPS, sharpen_floor=reference.sharpen_floor(dtype))


# memory_step's CPU kernels return new memory slot-minor: a [B, N, M] view of [B, M, N] storage (strides
# [N*M, 1, N]), the layout they compute in, and take memory and its gradient in that layout or row-major.
# So in a recurrence only the first step's memory is transposed (csrc/ntm_cpu.cpp says more).
# The C++ bindings tell the layouts apart (kernel_memory in csrc/ntm.h); here outputs are allocated.
def _slot_minor(x: Tensor) -> bool:
    return x.device.type == "cpu" and not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def _new_memory(memory: Tensor, slot_minor: bool) -> Tensor:
    """An uninitialised [B, N, M] output for a memory (or its gradient), slot-minor or row-major."""
    B, N, M = memory.shape
    return empty_output((B, M, N), memory).transpose(1, 2) if slot_minor else empty_output((B, N, M), memory)


# Heads travel as Tensor[] arguments: read heads [key, beta, gate, shift, gamma, w_prev] (as the kernels take
# them), write heads the same plus [erase, add]. Few schema arguments keep the custom-op call cheap.

# --- address (Eq 5-9) ------------------------------------------------------------------------------------
def _address_impl(memory: Tensor, heads: List[Tensor]) -> Tensor:
    memory, heads = memory.contiguous(), _contiguous(heads)
    w = empty_output(heads[5].shape, memory)
    _kernels(memory).address_forward(memory, heads, w, **_numerics(memory.dtype))
    return w


_address = torch.library.custom_op("ntm_fast::address", mutates_args=())(_address_impl)


@_address.register_fake
def _(memory, heads):
    return torch.empty_like(heads[5])


def _address_backward_impl(grads: List[Tensor], memory: Tensor, heads: List[Tensor]) -> List[Tensor]:
    (grad_w,), memory, heads = _contiguous(grads), memory.contiguous(), _contiguous(heads)
    d_memory, *d_heads = _like([memory, *heads], memory)
    _kernels(memory).address_backward(memory, heads, grad_w, d_memory, d_heads, **_numerics(memory.dtype))
    return [d_memory, *d_heads]


_address_backward = torch.library.custom_op("ntm_fast::address_backward", mutates_args=())(_address_backward_impl)


# --- read (Eq 2) -----------------------------------------------------------------------------------------
def _read_impl(memory: Tensor, w: Tensor) -> Tensor:
    memory, w = _contiguous([memory, w])
    r = empty_output((w.shape[0], w.shape[1], memory.shape[2]), memory)
    _kernels(memory).read_forward(memory, w, r)
    return r


_read = torch.library.custom_op("ntm_fast::read", mutates_args=())(_read_impl)


@_read.register_fake
def _(memory, w):
    return memory.new_empty((w.shape[0], w.shape[1], memory.shape[2]))


def _read_backward_impl(grads: List[Tensor], memory: Tensor, w: Tensor) -> List[Tensor]:
    grad_r, memory, w = _contiguous([*grads, memory, w])
    d_memory, d_w = _like([memory, w], memory)
    _kernels(memory).read_backward(memory, w, grad_r, d_memory, d_w)
    return [d_memory, d_w]


_read_backward = torch.library.custom_op("ntm_fast::read_backward", mutates_args=())(_read_backward_impl)


# --- write (Eq 3-4) --------------------------------------------------------------------------------------
def _write_impl(memory: Tensor, w: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    memory, w, erase, add = _contiguous([memory, w, erase, add])
    out = empty_output(memory.shape, memory)
    _kernels(memory).write_forward(memory, w, erase, add, out)
    return out


_write = torch.library.custom_op("ntm_fast::write", mutates_args=())(_write_impl)


@_write.register_fake
def _(memory, w, erase, add):
    return torch.empty_like(memory)


def _write_backward_impl(grads: List[Tensor], memory: Tensor, w: Tensor, erase: Tensor,
                         add: Tensor) -> List[Tensor]:
    grad_out, memory, w, erase, add = _contiguous([*grads, memory, w, erase, add])
    d_inputs = _like([memory, w, erase, add], memory)
    _kernels(memory).write_backward(memory, w, erase, add, grad_out, *d_inputs)
    return d_inputs


_write_backward = torch.library.custom_op("ntm_fast::write_backward", mutates_args=())(_write_backward_impl)


# --- memory_step: every head addresses M_{t-1}, then the reads and the write -----------------------------
def _memory_step_impl(memory: Tensor, read_heads: List[Tensor],
                      write_heads: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    read_heads, write_heads = _contiguous(read_heads), _contiguous(write_heads)
    (B, R, M), w_read_prev, w_write_prev = read_heads[0].shape, read_heads[5], write_heads[5]
    reads = empty_output((B, R, M), memory)
    w_read, w_write = _like([w_read_prev, w_write_prev], memory)
    new_memory = _new_memory(memory, memory.device.type == "cpu")
    _kernels(memory).memory_step_forward(memory, read_heads, write_heads[:6], *write_heads[6:], reads, w_read,
                                         w_write, new_memory, **_numerics(memory.dtype))
    return reads, w_read, w_write, new_memory


_memory_step = torch.library.custom_op("ntm_fast::memory_step", mutates_args=())(_memory_step_impl)


@_memory_step.register_fake
def _(memory, read_heads, write_heads):
    key, w_read_prev, w_write_prev = read_heads[0], read_heads[5], write_heads[5]
    B, N, M = memory.shape
    new_memory = memory.new_empty((B, M, N)).transpose(1, 2) if memory.device.type == "cpu" else memory.new_empty(
        (B, N, M))
    return torch.empty_like(key), torch.empty_like(w_read_prev), torch.empty_like(w_write_prev), new_memory


def _memory_step_backward_impl(grads: List[Tensor], memory: Tensor, read_heads: List[Tensor],
                               write_heads: List[Tensor]) -> List[Tensor]:
    read_heads, write_heads = _contiguous(read_heads), _contiguous(write_heads)
    d_memory = _new_memory(memory, _slot_minor(memory))  # in the memory's own layout
    d_heads = _like([*read_heads, *write_heads], memory)
    d_read, d_write = d_heads[:6], d_heads[6:]
    _kernels(memory).memory_step_backward(memory, read_heads, write_heads[:6], *write_heads[6:],
                                          *_contiguous(grads[:3]), grads[3], d_memory, d_read, d_write[:6],
                                          *d_write[6:], **_numerics(memory.dtype))
    return [d_memory, *d_heads]


_memory_step_backward = torch.library.custom_op("ntm_fast::memory_step_backward",
                                                mutates_args=())(_memory_step_backward_impl)


# --- fakes of the backward ops: one gradient per forward input, flat -------------------------------------
def _fake_input_grads(grads, *inputs):
    return [torch.empty_like(t) for x in inputs for t in (x if isinstance(x, (list, tuple)) else [x])]


for _backward_op in (_address_backward, _read_backward, _write_backward, _memory_step_backward):
    _backward_op.register_fake(_fake_input_grads)


# --- autograd: save the inputs, run the fused backward op ------------------------------------------------
def _save_inputs(ctx, inputs, output):
    ctx.layout = [len(x) if isinstance(x, (list, tuple)) else None for x in inputs]
    ctx.save_for_backward(*[t for x in inputs for t in (x if isinstance(x, (list, tuple)) else [x])])


def _saved_inputs(ctx):
    """ctx.saved_tensors regrouped as the op's arguments (Tensor[] arguments as lists)."""
    flat = iter(ctx.saved_tensors)
    return [next(flat) if n is None else [next(flat) for _ in range(n)] for n in ctx.layout]


def _backward_with(backward_op):
    def backward(ctx, *grads):
        d_flat = iter(backward_op(list(grads), *_saved_inputs(ctx)))
        return tuple(next(d_flat) if n is None else [next(d_flat) for _ in range(n)] for n in ctx.layout)

    return backward


for _op, _backward_op in ((_address, _address_backward), (_read, _read_backward), (_write, _write_backward),
                          (_memory_step, _memory_step_backward)):
    _op.register_autograd(_backward_with(_backward_op), setup_context=_save_inputs)


# --- eager path: a plain autograd.Function over the same implementations ---------------------------------
# Outside torch.compile the custom-op machinery (schema dispatch, the generated autograd node and its Python
# backward) costs more per call than the fused kernel itself at small batches, so eager calls go through
# _Fused; under torch.compile (torch.compiler.is_compiling()) the registered custom ops are used, which the
# compiler sees as opaque ops with fake kernels. Both run the same *_impl functions.
class _Fused(torch.autograd.Function):
    """apply(forward_impl, backward_impl, layout, *flat inputs): layout as in _save_inputs (list lengths)."""

    @staticmethod
    def forward(ctx, forward_impl, backward_impl, layout, *flat):
        # Slot-minor memory (argument 0) stays as it is: memory_step reads it without a copy.
        flat = [t if i == 0 and _slot_minor(t) else t.contiguous() for i, t in enumerate(flat)]
        args, it = [], iter(flat)
        for n in layout:
            args.append(next(it) if n is None else [next(it) for _ in range(n)])
        ctx.backward_impl, ctx.layout = backward_impl, layout
        ctx.save_for_backward(*flat)
        return forward_impl(*args)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        it = iter(ctx.saved_tensors)
        args = [next(it) if n is None else [next(it) for _ in range(n)] for n in ctx.layout]
        return (None, None, None, *ctx.backward_impl(list(grads), *args))


_ADDRESS_LAYOUT, _MEMORY_STEP_LAYOUT = (None, 6), (None, 6, 8)


# --- the backend object ----------------------------------------------------------------------------------
def _address_call(memory, key, beta, gate, shift, gamma, w_prev):
    if torch.compiler.is_compiling():
        return _address(memory, [key, beta, gate, shift, gamma, w_prev])
    return _Fused.apply(_address_impl, _address_backward_impl, _ADDRESS_LAYOUT, memory, key, beta, gate, shift,
                        gamma, w_prev)


def _read_call(memory, w):
    if torch.compiler.is_compiling():
        return _read(memory, w)
    return _Fused.apply(_read_impl, _read_backward_impl, (None, None), memory, w)


def _write_call(memory, w, erase, add):
    if torch.compiler.is_compiling():
        return _write(memory, w, erase, add)
    return _Fused.apply(_write_impl, _write_backward_impl, (None,) * 4, memory, w, erase, add)


def _memory_step_call(memory, read_heads, write_heads, w_read_prev, w_write_prev):
    r, w = read_heads, write_heads
    if torch.compiler.is_compiling():
        return _memory_step(memory, [r.key, r.beta, r.gate, r.shift, r.gamma, w_read_prev],
                            [w.key, w.beta, w.gate, w.shift, w.gamma, w_write_prev, w.erase, w.add])
    return _Fused.apply(_memory_step_impl, _memory_step_backward_impl, _MEMORY_STEP_LAYOUT, memory, r.key, r.beta,
                        r.gate, r.shift, r.gamma, w_read_prev, w.key, w.beta, w.gate, w.shift, w.gamma,
                        w_write_prev, w.erase, w.add)


OPS = types.SimpleNamespace(address=_address_call, read=_read_call, write=_write_call,
                            memory_step=_memory_step_call)


def load_cpp():
    """The ``cpp`` backend's ops (building the extension on first use); BackendUnavailable if it can't."""
    _module(False)
    return OPS


def load_cuda():
    """The ``cuda`` backend's ops; BackendUnavailable without a CUDA build of torch, a GPU or a toolkit."""
    if torch.version.cuda is None:
        raise BackendUnavailable(f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU is visible")
    _module(True)
    return OPS
