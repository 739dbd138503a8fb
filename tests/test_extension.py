"""The C++/CUDA extension itself: torch.library registration (opcheck), non-contiguous inputs, torch.compile,
a failing build, an nvcc compile check of every CUDA source (registers and spills printed), and a compile
check of the C++ side of the CUDA build (without a CUDA build of torch, against its headers).

Its numerics against the reference are tested in test_backend_equivalence.py (backends "cpp" and "cuda").
"""
import os
import re
import shutil
import subprocess
import sysconfig
import time

import pytest
import torch

import cases
from ntm_fast import ops
from ntm_fast.ops import dispatch, extension
from ntm_fast.ops.autograd import KERNEL_OPS, kernel_backward, kernel_forward
from ntm_fast.ops.shared import BackendUnavailable

@pytest.fixture(scope="module")
def cpp():
    cases.backend_or_skip("cpp", "cpu")
    return dispatch.load("cpp")


def _grad_leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _op_args(op):
    """Small float64 inputs of each op, flat in KERNEL_OPS order, requiring grad."""
    if op == "address":
        return _grad_leaves(cases.address_inputs(2, 7, 3, 2, 1).values())
    if op == "memory_step":
        step = cases.memory_step_inputs(2, 7, 3, 1, 2, 1)
        return _grad_leaves([step["memory"], *step["read_heads"], *step["write_heads"], step["w_read_prev"],
                             step["w_write_prev"]])
    make = cases.read_inputs if op == "read" else cases.write_inputs
    return _grad_leaves(make(2, 7, 3, 2).values())


def _detached(args):
    return [t.detach() for t in args]


def _backward_args(op, inputs):
    """kernel_backward's arguments for `op` on `inputs`: the saved outputs and random output gradients."""
    outputs = kernel_forward(op, "cpp", inputs)
    saved = [outputs[i] for i in KERNEL_OPS[op].saved]
    return [op, "cpp", inputs, saved, [torch.randn_like(o) for o in outputs]]


@pytest.mark.parametrize("op", list(KERNEL_OPS))
def test_opcheck_forward(cpp, op):
    torch.library.opcheck(kernel_forward, [op, "cpp", _op_args(op)])


@pytest.mark.parametrize("op", list(KERNEL_OPS))
def test_opcheck_backward(cpp, op):
    torch.library.opcheck(kernel_backward, _backward_args(op, _detached(_op_args(op))))


def test_non_contiguous_inputs(cpp):
    """Transposed, sliced and broadcast (expanded) inputs give what their contiguous copies give."""
    inputs = cases.memory_step_inputs(3, 33, 20, 2, 1, 1)
    memory = inputs["memory"][:1].expand(3, -1, -1)  # as NTMCell.initial_state passes it
    key = inputs["read_heads"].key.transpose(0, 1).contiguous().transpose(0, 1)
    wide = torch.cat([inputs["w_read_prev"], inputs["w_read_prev"]], dim=-1)[..., ::2]
    strided = dict(inputs, memory=memory, read_heads=inputs["read_heads"]._replace(key=key), w_read_prev=wide)
    dense = {k: (type(v)(*[t.contiguous() for t in v]) if isinstance(v, tuple) else v.contiguous())
             for k, v in strided.items()}
    for got, want in zip(ops.memory_step(**strided, backend="cpp"), ops.memory_step(**dense, backend="reference")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _recurrence(memory, steps, backend, weight):
    """`memory_step` chained over `steps` (each a memory_step_inputs dict without memory); a loss that uses
    every step's reads and weightings and the last memory (times `weight`, any layout)."""
    loss = 0
    for step in steps:
        reads, w_read, w_write, memory = ops.memory_step(memory, step["read_heads"], step["write_heads"],
                                                         step["w_read_prev"], step["w_write_prev"], backend=backend)
        loss = loss + reads.square().sum() + (w_read * w_write.sum(1, keepdim=True)).sum()
    return loss + (memory * weight).sum(), memory


@pytest.mark.parametrize("last_grad_layout", ["row-major", "slot-minor"])
def test_memory_step_recurrence_with_slot_minor_memory(cpp, last_grad_layout):
    """memory_step's CPU output is slot-minor ([B, N, M] over [B, M, N] storage) and the next step takes it
    without a copy; values and gradients of a 3-step recurrence match the reference (float64), whatever the
    layout of the gradient that reaches the last memory."""
    B, N, M = 3, 11, 5
    steps = [cases.memory_step_inputs(B, N, M, 2, 1, 1, seed=seed) for seed in range(3)]
    memory0 = steps[0]["memory"]
    weight = torch.randn(B, N, M, dtype=torch.float64)
    if last_grad_layout == "slot-minor":
        weight = weight.transpose(1, 2).contiguous().transpose(1, 2)
    results = {}
    for backend in ("cpp", "reference"):
        leaves = _grad_leaves([memory0, *[t for s in steps for t in cases.flat_tensors(s)[1:]]])
        it = iter(leaves[1:])
        rebuilt = [cases.rebuild(s, [s["memory"], *[next(it) for _ in cases.flat_tensors(s)[1:]]]) for s in steps]
        loss, last = _recurrence(leaves[0], rebuilt, backend, weight)
        results[backend] = (loss.detach(), last.detach(), torch.autograd.grad(loss, leaves))
        if backend == "cpp":
            assert last.stride() == (N * M, 1, N), last.stride()
    (loss, last, grads), (ref_loss, ref_last, ref_grads) = results["cpp"], results["reference"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_memory_step_gradcheck_through_slot_minor_memory(cpp):
    """torch.autograd.gradcheck of two chained steps: the second takes the first's slot-minor memory."""
    steps = [cases.memory_step_inputs(2, 5, 3, 1, 1, 1, seed=seed) for seed in range(2)]
    memory = steps[0]["memory"].detach().clone().requires_grad_(True)
    rest = [{k: v for k, v in s.items() if k != "memory"} for s in steps]

    def two_steps(memory):
        return _recurrence(memory, rest, "cpp", torch.ones_like(memory))[1]

    assert torch.autograd.gradcheck(two_steps, (memory,))


def test_opcheck_memory_step_slot_minor(cpp):
    """The registered op's fake kernels give the real strides for slot-minor memory too."""
    memory, *heads = _op_args("memory_step")
    memory = memory.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    torch.library.opcheck(kernel_forward, ["memory_step", "cpp", [memory, *heads]])
    torch.library.opcheck(kernel_backward, _backward_args("memory_step", _detached([memory, *heads])))


def test_torch_compile(cpp):
    """torch.compile of a function using the cpp ops traces through them (no graph break, fake kernels) and
    gives the eager values and gradients. Compiling takes tens of seconds on a 2-core machine."""
    inputs = cases.memory_step_inputs(2, 7, 3, 1, 1, 1, dtype=torch.float32)

    def loss(memory, read_heads, write_heads, w_read_prev, w_write_prev):
        reads, w_read, w_write, new_memory = cpp.memory_step(memory, read_heads, write_heads, w_read_prev,
                                                             w_write_prev)
        w = cpp.address(new_memory, read_heads.key, read_heads.beta, read_heads.gate, read_heads.shift,
                        read_heads.gamma, w_read)
        return (reads.sum() + (w * w_write).sum() + cpp.read(new_memory, w).square().sum()
                + cpp.write(new_memory, w_write, write_heads.erase, write_heads.add).sum())

    def run(fn):
        leaves = _grad_leaves(cases.flat_tensors(inputs))
        value = fn(**cases.rebuild(inputs, leaves))
        return value.detach(), torch.autograd.grad(value, leaves)

    torch._dynamo.reset()
    start = time.perf_counter()
    compiled = run(torch.compile(loss, backend="aot_eager", fullgraph=True))
    print(f"torch.compile (aot_eager, fullgraph) + first run: {time.perf_counter() - start:.1f} s")
    eager = run(loss)
    torch.testing.assert_close(compiled[0], eager[0])
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want)


def _values_and_grads(op, inputs, backend):
    """The op's outputs and the gradients of all its inputs for a fixed random upstream gradient."""
    leaves = _grad_leaves(cases.flat_tensors(inputs))
    outputs = getattr(ops, op)(**cases.rebuild(inputs, leaves), backend=backend)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    g = torch.Generator().manual_seed(7)
    upstream = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]
    return [o.detach() for o in outputs], list(torch.autograd.grad(outputs, leaves, upstream))


def _assert_matches_reference(op, inputs):
    """cpp and the reference give the same NaN and inf entries, and finite ones as test_backend_equivalence asks:
    float64 tightly, float32 within a few times the float32 reference's own error against float64. Returns the
    reference's values and gradients."""
    dtype = cases.flat_tensors(inputs)[0].dtype
    got, want = (_values_and_grads(op, inputs, b) for b in ("cpp", "reference"))
    oracle = want
    if dtype != torch.float64:
        oracle = _values_and_grads(op, cases.rebuild(inputs, [t.double() for t in cases.flat_tensors(inputs)]),
                                   "reference")
    for part, kind in enumerate(("output", "gradient")):
        for i, (g, w, o) in enumerate(zip(got[part], want[part], oracle[part])):
            finite = torch.isfinite(w)
            torch.testing.assert_close(g[~finite], w[~finite], equal_nan=True, rtol=0, atol=0,
                                       msg=lambda m: f"{op} {kind} {i}, non-finite entries: {m}")
            assert torch.isfinite(g[finite]).all(), f"{op} {kind} {i}: non-finite where the reference is finite"
            if dtype == torch.float64:
                torch.testing.assert_close(g[finite], w[finite], rtol=1e-7, atol=1e-9,
                                           msg=lambda m: f"{op} {kind} {i}: {m}")
            else:
                both = finite & torch.isfinite(o)
                ref_err = (w.double() - o)[both].abs().max().item() if both.any() else 0.0
                torch.testing.assert_close(g.double()[both], o[both], rtol=1e-4, atol=1e-5 + 4 * ref_err,
                                           msg=lambda m: f"{op} {kind} {i} (reference f32 error {ref_err:.2e}): {m}")
    return want[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param, value", [("beta", 1e10), ("beta", "max"), ("gamma", 1e10), ("gamma", 1e30)])
@pytest.mark.parametrize("op", ["address", "memory_step"])
def test_extreme_beta_and_gamma_match_reference(cpp, op, param, value, dtype):
    """β and γ up to the dtype's range give the reference's finite weights, and its gradients. (The softmax's
    products β·K and γ·log w_s must be rounded before the max is subtracted: fused into an FMA they left each
    product's rounding error, e^error overflowed the sum, and β = 1e10 gave NaN weights in float32.)"""
    value = torch.finfo(dtype).max if value == "max" else value
    if op == "address":
        inputs = cases.address_inputs(3, 9, 4, 2, 1, dtype=dtype)
        inputs[param].fill_(value)
    else:
        inputs = cases.memory_step_inputs(3, 9, 4, 2, 1, 1, dtype=dtype)
        for heads in ("read_heads", "write_heads"):
            getattr(inputs[heads], param).fill_(value)
    want = _assert_matches_reference(op, inputs)
    assert all(torch.isfinite(w).all() for w in want), "the reference's result is finite here"


_STEP_INPUTS = ["memory", "read key", "read beta", "read gate", "read shift", "read gamma", "write key",
                "write beta", "write gate", "write shift", "write gamma", "erase", "add", "w_read_prev",
                "w_write_prev"]  # cases.flat_tensors' order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("target", _STEP_INPUTS)
def test_non_finite_input_matches_reference(cpp, target, value, dtype):
    """A NaN or ±inf in one element of any memory_step input gives the reference's values and gradients: NaN
    (or inf) wherever the reference has one, never a finite stand-in. (log(+inf) in the vectorized log was
    finite, so an infinite shift or previous weighting gave finite weights; an erase value that was not finite
    got a finite gradient.)"""
    inputs = cases.memory_step_inputs(2, 7, 3, 1, 2, 1, dtype=dtype)
    cases.flat_tensors(inputs)[_STEP_INPUTS.index(target)].view(-1)[1] = value
    _assert_matches_reference("memory_step", inputs)


def test_failing_build_raises_backend_unavailable(tmp_path, monkeypatch):
    """A build that fails (here: sources that do not compile) raises BackendUnavailable with the compiler's
    error, which is what `auto` logs when it falls back and what backend='cpp' raises."""
    pytest.importorskip("ninja")
    src = tmp_path / "csrc"
    src.mkdir()
    for name in extension.CPU_SOURCES:
        (src / name).write_text("#error ntm_fast test: deliberately broken source\n")
    monkeypatch.setattr(extension, "CSRC", str(src))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with pytest.raises(BackendUnavailable, match="deliberately broken source"):
        extension.build(with_cuda=False)


# "Compiling entry function 'NAME' for 'sm_90'", then "N bytes spill stores, M bytes spill loads", then
# "Used R registers" for each kernel in ptxas -v output.
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def _kernel_name(mangled):
    """'..._GLOBAL__N_...27memory_step_backward_kernelIfEE...' -> 'memory_step_backward_kernel<float>'."""
    match = re.search(r"([a-z_]+_kernel)I([fd])E", mangled)
    return f"{match.group(1)}<{'float' if match.group(2) == 'f' else 'double'}>" if match else mangled


@pytest.mark.parametrize("source", [s for s in extension.CUDA_SOURCES if s.endswith(".cu")])
def test_cuda_sources_compile(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH: the CUDA sources cannot be compile-checked here")
    cmd = [nvcc, "-c", "-arch=sm_90", "-Xptxas", "-v", *extension.NVCC_FLAGS, os.path.join(extension.CSRC, source),
           "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{log}"
    assert "warning" not in log.lower(), log
    kernels, name, spills = {}, None, None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            name = _kernel_name(match.group(1))
        elif match := _SPILLS.search(line):
            spills = (int(match.group(1)), int(match.group(2)))
        elif (match := _REGISTERS.search(line)) and name is not None:
            kernels[name] = (int(match.group(1)), *spills)
    assert kernels, f"ptxas reported no kernels:\n{log}"
    print(f"\n{source} (sm_90): registers, spill stores/loads (bytes)")
    for kernel, (registers, stores, loads) in sorted(kernels.items()):
        print(f"  {kernel:36s} {registers:4d} registers  {stores:3d}/{loads:3d} spilled")


def _cuda_include_dir(nvcc):
    """The CUDA toolkit's include directory, as nvcc itself reports it."""
    dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True,
                         text=True)
    match = re.search(r'INCLUDES="-I([^"]+?)"', dry.stdout + dry.stderr)
    return match.group(1).strip() if match else None


def test_cuda_host_sources_compile_and_link(tmp_path):
    """The C++ files of the CUDA build (-DNTM_WITH_CUDA) compile against this torch's headers, and every
    ntm::cuda:: function the bindings call is defined by ntm_cuda.cpp with that exact signature, so a
    declaration that drifted between ntm.h, ntm_cuda.cpp and bindings.cpp fails here rather than on a GPU
    machine. A CPU build of torch lacks one generated header of c10/cuda (its export macros); a stand-in
    is supplied for this compile-only check (nothing is linked into a library or run)."""
    nvcc, cxx, nm = shutil.which("nvcc"), shutil.which(os.environ.get("CXX", "g++")), shutil.which("nm")
    if nvcc is None or cxx is None or nm is None:
        pytest.skip("needs nvcc (for the CUDA headers), a C++ compiler and nm")
    cuda_include = _cuda_include_dir(nvcc)
    if cuda_include is None or not os.path.isfile(os.path.join(cuda_include, "cuda_runtime_api.h")):
        pytest.skip(f"no cuda_runtime_api.h under nvcc's include directory ({cuda_include})")
    from torch.utils import cpp_extension

    torch_include = cpp_extension.include_paths()
    generated = os.path.join("c10", "cuda", "impl", "cuda_cmake_macros.h")
    if not any(os.path.isfile(os.path.join(d, generated)) for d in torch_include):
        stand_in = tmp_path / generated
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        torch_include = [str(tmp_path), *torch_include]
    includes = [f"-I{d}" for d in [*torch_include, cuda_include, sysconfig.get_paths()["include"], extension.CSRC]]
    symbols = {}
    for source, kind in (("ntm_cuda.cpp", "defined"), ("bindings.cpp", "undefined")):
        obj = tmp_path / (source + ".o")
        cmd = [cxx, "-std=c++20", "-c", "-O0", "-fPIC", "-DNTM_WITH_CUDA", "-DTORCH_EXTENSION_NAME=ntm_fast_C_cuda",
               *includes, os.path.join(extension.CSRC, source), "-o", str(obj)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}"
        listed = subprocess.run([nm, "-C", "--defined-only" if kind == "defined" else "--undefined-only", str(obj)],
                                capture_output=True, text=True, check=True).stdout
        symbols[source] = {m.group(1) for m in re.finditer(r"^\s*(?:[0-9a-f]+\s+)?[A-Za-z]\s+(ntm::cuda::.*)$",
                                                           listed, re.M)}
    called = symbols["bindings.cpp"]
    assert called, "bindings.cpp calls no ntm::cuda:: function with -DNTM_WITH_CUDA"
    missing = called - symbols["ntm_cuda.cpp"]
    assert not missing, f"called by bindings.cpp but not defined by ntm_cuda.cpp: {sorted(missing)}"


def test_compiling_the_model_warns_nothing(cpp):
    """torch.compile of a fresh model (no backend resolved yet) traces no backend loading: Dynamo warns of
    nothing (it used to warn of dispatch's functools.lru_cache on every compile) and the values agree."""
    import warnings

    from ntm_fast import NTM

    model = NTM(9, 8, controller_size=16, memory_slots=16, memory_width=4, backend="cpp")
    x = torch.randn(3, 2, 9, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    dispatch.forget()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend="aot_eager")(x)
    assert [str(w.message) for w in caught] == []
    torch.testing.assert_close(compiled, model(x))
