"""Compile every Triton kernel in kernels/ for an NVIDIA GPU, without one, and report what each uses.

    python benchmarks/compile_report.py [--arch 90] [--sizes default largest] [--dtypes float32 float64]
                                        [--kernels TEXT ...] [--markdown FILE] [--json FILE]

Each kernel is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", ARCH, 32))` for the
arguments its launcher passes: the per-op kernels' launches are rebuilt here with kernels/_common.py's
`launch`, `tiles` and `shift_args` (the tiles, num_warps and extra arguments their launchers use); the
whole-sequence kernels' are captured from their plain launchers. Triton's own argument binder specialises
them as a real launch is: integer arguments equal to 1 become constants, 16-divisible integers and 16-byte
aligned pointers carry that hint. Tensors are `meta` tensors (aligned, no storage), so the largest sizes
cost no memory. The tile budget is the GPU's: main() clears TRITON_INTERPRET before the kernels are
imported (a process that imported them under the interpreter cannot compile them).

From the cubin, the `cuobjdump -res-usage` shipped inside Triton gives registers per thread, the stack frame
and local memory per thread (spills live there) and the static shared memory (where a kernel uses shared
memory at all, this includes the 1 KB per block that sm_80 and later reserve); `cuobjdump -sass` counts the
local-memory stores and loads (STL/LDL: Triton kernels hold no local arrays, so these are spilled
registers). The dynamic shared memory requested at launch is the compiled metadata's `shared`.

Run it under another Triton (the GPU machine's, say) from a venv that holds that Triton and torch: nothing
else is needed. The table goes to stdout (markdown), and with --markdown / --json to files. Exit status 1 if any kernel
failed to compile or a kernel in kernels/ has no launch below (see LAUNCHES); 2 if this Triton cannot
compile for NVIDIA GPUs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from typing import Callable, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One problem size: batch B, slots N, slot width M, R read and W write heads, shifts -S..S; for the
    whole-sequence kernels also T steps, X inputs, C LSTM units and Y outputs."""
    B: int
    N: int
    M: int
    R: int
    W: int
    S: int
    T: int
    X: int
    C: int
    Y: int

    def __str__(self):
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in dataclasses.fields(self))


SIZES = {
    # The default model (README): N=128, M=20, 1 read + 1 write head, shifts -1..1, LSTM of 100 units, on the
    # copy task (8-bit vectors: X=9, Y=8; L=20: T=41), at a training batch.
    "default": Sizes(B=1024, N=128, M=20, R=1, W=1, S=1, T=41, X=9, C=100, Y=8),
    # The largest the project tests or benchmarks: B and N up to 4096 (benchmarks), M up to 33 (padded to
    # 64), up to 4 heads, shifts -3..3 (tests). B, N, R, W, S, T, X, C and Y are runtime arguments of the
    # kernels (or loop bounds); M sets the tile width.
    "largest": Sizes(B=4096, N=4096, M=33, R=4, W=4, S=3, T=41, X=9, C=256, Y=8),
}


class Launch(NamedTuple):
    """One kernel launch as its launcher makes it: the kernel, the grid, positional and keyword arguments."""
    kernel: object  # triton.runtime.jit.JITFunction
    grid: tuple
    args: list
    kwargs: dict


def kernel_module(name: str):
    """kernels/<name>.py of this source tree (imported as the top-level package `kernels`), compiled for the
    GPU: with the GPU's tile budget and real @triton.jit functions, not the interpreter's."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from triton.runtime.jit import JITFunction

    # Imported under TRITON_INTERPRET, @triton.jit gives interpreted functions and _common the interpreter's
    # tile budget (TILE_ELEMENTS is GPU_TILE_ELEMENTS otherwise).
    if not isinstance(importlib.import_module("kernels._common").div, JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET: unset it before importing them")
    return importlib.import_module(f"kernels.{name}")


def _tensor(dtype):
    import torch

    return lambda *shape: torch.empty(shape, dtype=dtype, device="meta")


# ---- the launches: one function per kernel module, mirroring its launchers ------------------------------

def _constants(dtype) -> dict:
    """ε and the sharpening floor, as the autograd layer passes them to every launcher."""
    from ntm_fast.ops.reference import COSINE_EPS, sharpen_floor

    return dict(eps=COSINE_EPS, tiny=sharpen_floor(dtype))


def address_launches(sizes: Sizes, dtype) -> list[Launch]:
    address, common = kernel_module("address"), kernel_module("_common")
    t = _tensor(dtype)
    B, N, M, H, S = sizes.B, sizes.N, sizes.M, sizes.R, sizes.S
    K = 2 * S + 1
    memory = t(B, N, M)
    inputs = [memory, t(B, H, M), t(B, H), t(B, H), t(B, H, K), t(B, H), t(B, H, N)]
    grid, args = common.launch(memory)
    args.update(common.shift_args(N, S, **_constants(dtype)), BLOCK_S=args["BLOCK_N"])
    scratch = common.scratch(2, B, N, memory)
    w = t(B, H, N)
    grads = [t(*x.shape) for x in inputs]
    return [
        Launch(address._address_fwd_kernel, grid, [*inputs, w, scratch, H], args),
        Launch(address._address_bwd_kernel, grid, [*inputs, w, t(B, H, N), *grads, t(B, H, N), scratch, H],
               dict(args, BLOCK_K=common.pow2(K))),
    ]


def read_write_launches(sizes: Sizes, dtype) -> list[Launch]:
    read_write, common = kernel_module("read_write"), kernel_module("_common")
    t = _tensor(dtype)
    B, N, M, R, W = sizes.B, sizes.N, sizes.M, sizes.R, sizes.W
    memory = t(B, N, M)
    grid, args = common.launch(memory)
    return [
        Launch(read_write._read_kernel, grid, [memory, t(B, R, N), t(B, R, M), R], dict(args, BLOCK_H=common.pow2(R))),
        Launch(read_write._read_bwd_kernel, grid, [memory, t(B, R, N), t(B, R, M), t(B, N, M), t(B, R, N), R], args),
        Launch(read_write._write_kernel, grid, [memory, t(B, W, N), t(B, W, M), t(B, W, M), t(B, N, M), W], args),
        Launch(read_write._write_bwd_kernel, grid,
               [memory, t(B, W, N), t(B, W, M), t(B, W, M), t(B, N, M), t(B, N, M), t(B, W, N), t(B, W, M),
                t(B, W, M), W], dict(args, BLOCK_W=common.pow2(W))),
    ]


def memory_step_launches(sizes: Sizes, dtype) -> list[Launch]:
    memory_step, common = kernel_module("memory_step"), kernel_module("_common")
    t = _tensor(dtype)
    B, N, M, R, W, S = sizes.B, sizes.N, sizes.M, sizes.R, sizes.W, sizes.S
    K = 2 * S + 1
    memory = t(B, N, M)
    read_heads = [t(B, R, M), t(B, R), t(B, R), t(B, R, K), t(B, R)]
    write_heads = [t(B, W, M), t(B, W), t(B, W), t(B, W, K), t(B, W), t(B, W, M), t(B, W, M)]
    inputs = [memory, *read_heads, *write_heads, t(B, R, N), t(B, W, N)]
    grid, args = common.launch(memory)
    args.update(common.shift_args(N, S, **_constants(dtype)), BLOCK_S=args["BLOCK_N"])
    scratch = common.scratch(2 + R + W, B, N, memory)
    w_read, w_write = t(B, R, N), t(B, W, N)
    upstream = [t(B, R, M), t(B, R, N), t(B, W, N), t(B, N, M)]
    grads = [t(*x.shape) for x in inputs]
    return [
        Launch(memory_step._memory_step_fwd_kernel, grid,
               [*inputs, t(B, R, M), w_read, w_write, t(B, N, M), scratch, R, W], dict(args, BLOCK_R=common.pow2(R))),
        Launch(memory_step._memory_step_bwd_kernel, grid,
               [*inputs, w_read, w_write, *upstream, *grads, scratch, R, W],
               dict(args, BLOCK_W=common.pow2(W), BLOCK_K=common.pow2(K))),
    ]


def captured(call) -> list[Launch]:
    """The kernel launches `call()` makes, recorded instead of run: the arguments exactly as a launcher
    passes them. (Triton's JITFunction.run, which `kernel[grid](...)` calls, is replaced during the call.)"""
    from triton.runtime.jit import JITFunction

    launches = []

    def record(kernel, *args, grid, warmup, **kwargs):
        launches.append(Launch(kernel, tuple(grid), list(args), dict(kwargs)))

    run = JITFunction.run
    JITFunction.run = record
    try:
        call()
    finally:
        JITFunction.run = run
    return launches


def sequence_launches(sizes: Sizes, dtype) -> list[Launch]:
    """The whole-sequence kernels (kernels/sequence.py, where it exists), as its plain launchers
    `sequence_forward` and `sequence_backward` launch them for an LSTM controller."""
    try:
        sequence = kernel_module("sequence")
    except ModuleNotFoundError as err:
        if err.name != "kernels.sequence":
            raise
        return []
    t = _tensor(dtype)
    B, N, M, R, W, S = sizes.B, sizes.N, sizes.M, sizes.R, sizes.W, sizes.S
    T, X, C, Y = sizes.T, sizes.X, sizes.C, sizes.Y
    H, K = R + W, 2 * S + 1
    P = H * M + 3 * H + H * K + 2 * W * M
    weights = dict(W_ih=t(4 * C, X + R * M), W_hh=t(4 * C, C), W_heads=t(P, C), W_out=t(Y, C + R * M))

    def forward_and_backward():
        from ntm_fast.ops import HeadLayout

        logits, state = sequence.sequence_forward(
            t(T, B, X), t(B, C), t(B, C), t(B, R * M), t(B, R, N), t(B, W, N), t(B, N, M),
            (weights["W_ih"], t(4 * C), weights["W_hh"], t(4 * C), weights["W_heads"], t(P), weights["W_out"], t(Y)),
            HeadLayout(R, W, M, S), **_constants(dtype))
        sequence.sequence_backward(state, t(*logits.shape), tuple(weights.values()))

    return captured(forward_and_backward)


# Every launch function, each taking (Sizes, torch dtype). A new kernel module adds its own here; a kernel
# that none of them launches is reported (and fails tests/test_compile_sm90.py).
LAUNCHES: list[Callable] = [address_launches, read_write_launches, memory_step_launches, sequence_launches]


def kernel_names() -> list[str]:
    """`module.name` of every @triton.jit function in kernels/ named *_kernel (the ones launched from Python)."""
    from triton.runtime.jit import JITFunction

    package = kernel_module("_common").__package__
    names = []
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        module = kernel_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, JITFunction) and attr.endswith("_kernel") and value.fn.__module__ == module.__name__:
                names.append(f"{info.name}.{attr}")
    return sorted(names)


def launch_name(launch: Launch) -> str:
    return f"{launch.kernel.fn.__module__.rsplit('.', 1)[-1]}.{launch.kernel.fn.__name__}"


# ---- compiling and reading the cubin --------------------------------------------------------------------

def nvidia_tools() -> tuple[str | None, str]:
    """(path of the cuobjdump shipped inside Triton, '') or (None, why this Triton cannot do the check)."""
    try:
        import triton.backends.nvidia as nvidia
    except ImportError as err:
        return None, f"no Triton with an NVIDIA backend here ({err})"
    path = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    if not os.access(path, os.X_OK):
        return None, f"this triton ships no cuobjdump ({path})"
    return path, ""


def compile_launch(launch: Launch, arch: int):
    """The kernel compiled for sm_<arch> with the specialisation a launch with these arguments gets."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def resource_usage(compiled, cuobjdump: str) -> dict:
    """Registers, stack, local memory and static shared memory of the cubin, its spill instructions, and the
    dynamic shared memory of a launch."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", path], check=True, capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", path], check=True, capture_output=True, text=True).stdout
    line = re.search(r"Function (\S+):\s*\n\s*(REG:.*)", usage)
    if line is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no function line:\n{usage}")
    fields = dict(re.findall(r"(\w+):(\d+)", line.group(2)))
    return dict(
        registers=int(fields["REG"]),
        stack=int(fields["STACK"]),
        local=int(fields["LOCAL"]),
        spill_stores=len(re.findall(r"\bSTL(?:\.\w+)*\s", sass)),
        spill_loads=len(re.findall(r"\bLDL(?:\.\w+)*\s", sass)),
        static_shared=int(fields["SHARED"]),
        shared=int(compiled.metadata.shared),
    )


def report(sizes_names, dtype_names, arch: int, cuobjdump: str, only=None,
           log=print) -> tuple[list[dict], list[str]]:
    """Compile every launch (whose kernel name contains one of `only`, if given) at every size and dtype:
    (rows, names of kernels in kernels/ that no launch function launches)."""
    import torch

    rows, launched = [], set()
    for sizes_name in sizes_names:
        sizes = SIZES[sizes_name]
        for dtype_name in dtype_names:
            dtype = getattr(torch, dtype_name)
            for make in LAUNCHES:
                for launch in make(sizes, dtype):
                    name = launch_name(launch)
                    launched.add(name)
                    if only and not any(text in name for text in only):
                        continue
                    row = dict(kernel=name, dtype=dtype_name, sizes=sizes_name, shape=str(sizes),
                               tiles="x".join(str(launch.kwargs[k]) for k in ("BLOCK_B", "BLOCK_N", "BLOCK_M")
                                              if k in launch.kwargs),
                               num_warps=launch.kwargs.get("num_warps", 4), programs=launch.grid[0])
                    try:
                        row.update(resource_usage(compile_launch(launch, arch), cuobjdump))
                    except Exception as err:  # reported in the table and the exit status, not hidden
                        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                    log(format_row(row))
                    rows.append(row)
    return rows, sorted(set(kernel_names()) - launched)


COLUMNS = ["kernel", "dtype", "sizes", "tiles B×N×M", "warps", "registers", "stack B", "local B",
           "spill st/ld", "shared B (dynamic + static)"]


def format_row(row: dict) -> str:
    if "error" in row:
        cells = [row["kernel"], row["dtype"], row["sizes"], row["tiles"], str(row["num_warps"]),
                 f"compile error: {row['error']}", "", "", "", ""]
    else:
        cells = [row["kernel"], row["dtype"], row["sizes"], row["tiles"].replace("x", "×"), str(row["num_warps"]),
                 str(row["registers"]), str(row["stack"]), str(row["local"]),
                 f"{row['spill_stores']}/{row['spill_loads']}", f"{row['shared']} + {row['static_shared']}"]
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [format_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default", "largest"])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"])
    parser.add_argument("--kernels", nargs="+", metavar="TEXT", help="only kernels whose name contains one of these")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # before any kernel is imported: real kernels, the GPU's tiles

    cuobjdump, why = nvidia_tools()
    if cuobjdump is None:
        print(f"compile_report: cannot compile for NVIDIA GPUs here: {why}", file=sys.stderr)
        return 2
    import torch
    import triton

    header = (f"Triton {triton.__version__} (torch {torch.__version__}), target sm_{args.arch}. Sizes: "
              + "; ".join(f"{name}: {SIZES[name]}" for name in args.sizes) + ".")
    print(header)
    print("| " + " | ".join(COLUMNS) + " |")
    rows, missing = report(args.sizes, args.dtypes, args.arch, cuobjdump, args.kernels)
    for name in missing:
        print(f"compile_report: kernel {name} is launched by none of LAUNCHES: add its launches", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(markdown(rows, header))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(triton=triton.__version__, torch=torch.__version__, arch=args.arch,
                           sizes={name: dataclasses.asdict(SIZES[name]) for name in args.sizes},
                           kernels=kernel_names(), missing=missing, rows=rows), handle, indent=1)
    return 1 if missing or any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
