"""Input validation shared by every op: rank, mutually consistent shapes, floating dtype, one device, and
a dtype the chosen backend computes in.

Errors name the op and the argument, give the expected shape with the sizes known so far (for example
``[B, H, M] = [4, 2, 20]``) and say what came instead.
"""
from __future__ import annotations

import torch

# The dtypes each backend computes in. float16/bfloat16: the reference computes in them, the Triton kernels
# load them into float32 arithmetic; the C++/CUDA extension is compiled for float32 and float64 only.
BACKEND_DTYPES = {
    "reference": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "triton": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "cpp": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes):
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _fmt_expected(dims, sizes):
    names = ", ".join(dims)
    known = ", ".join(str(sizes[d]) if d in sizes else "?" for d in dims)
    return f"[{names}] = [{known}]"


def check_tensors(op: str, specs, sizes: dict | None = None) -> dict:
    """Check ``specs`` = [(arg_name, value, "B H M"), ...] and return the sizes bound to each symbol.

    The first tensor fixes dtype and device; every symbol (B, H, N, ...) must take one value across all
    arguments. Raises TypeError for a non-tensor or a non-floating / mismatched dtype, ValueError for a
    wrong rank, an inconsistent or empty size, or a second device.
    """
    sizes = dict(sizes or {})
    first = None
    for name, value, dims in specs:
        dims = dims.split()
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{op}: argument '{name}' must be a torch.Tensor of shape {_fmt_expected(dims, sizes)}, "
                f"got {type(value).__name__}"
            )
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: argument '{name}' must be a floating-point tensor ({_dtype_names(FLOAT_DTYPES)}), "
                f"got {value.dtype}"
            )
        if first is None:
            first = (name, value)
        elif value.dtype != first[1].dtype:
            raise TypeError(
                f"{op}: argument '{name}' has dtype {value.dtype} but '{first[0]}' has {first[1].dtype}; "
                "all tensor arguments must share one dtype"
            )
        elif value.device != first[1].device:
            raise ValueError(
                f"{op}: argument '{name}' is on {value.device} but '{first[0]}' is on {first[1].device}; "
                "all tensor arguments must be on one device"
            )
        if value.dim() != len(dims):
            raise ValueError(
                f"{op}: argument '{name}' must have {len(dims)} dimensions {_fmt_expected(dims, sizes)}, "
                f"got shape {list(value.shape)}"
            )
        # Compare against the sizes bound by earlier arguments before binding this one's, so the
        # expected shape in the message never echoes the offending argument itself.
        for dim, size in zip(dims, value.shape):
            if dim in sizes and sizes[dim] != size:
                raise ValueError(
                    f"{op}: argument '{name}' must have shape {_fmt_expected(dims, sizes)}, "
                    f"got {list(value.shape)}"
                )
            if size == 0:
                raise ValueError(f"{op}: argument '{name}' has an empty dimension {dim}: shape {list(value.shape)}")
        sizes.update(zip(dims, value.shape))
    return sizes


def check_shift_width(op: str, name: str, shift: torch.Tensor) -> int:
    """The shift weighting covers offsets -S..S, so its last dimension 2S+1 must be odd. Returns S."""
    k = shift.shape[-1]
    if k % 2 != 1:
        raise ValueError(
            f"{op}: argument '{name}' must have an odd last dimension 2S+1 (shifts -S..S), got {k} "
            f"(shape {list(shift.shape)})"
        )
    return (k - 1) // 2


def check_address(op, memory, key, beta, gate, shift, gamma, w_prev, prefix=""):
    sizes = check_tensors(
        op,
        [
            ("memory", memory, "B N M"),
            (prefix + "key", key, "B H M"),
            (prefix + "beta", beta, "B H"),
            (prefix + "gate", gate, "B H"),
            (prefix + "shift", shift, "B H K"),
            (prefix + "gamma", gamma, "B H"),
            (prefix + "w_prev", w_prev, "B H N"),
        ],
    )
    check_shift_width(op, prefix + "shift", shift)
    return sizes


def check_read(op, memory, w):
    return check_tensors(op, [("memory", memory, "B N M"), ("w", w, "B H N")])


def check_write(op, memory, w, erase, add):
    return check_tensors(
        op, [("memory", memory, "B N M"), ("w", w, "B W N"), ("erase", erase, "B W M"), ("add", add, "B W M")]
    )


def check_memory_step(op, memory, read_heads, write_heads, w_read_prev, w_write_prev):
    for name, heads, fields in (
        ("read_heads", read_heads, ("key", "beta", "gate", "shift", "gamma")),
        ("write_heads", write_heads, ("key", "beta", "gate", "shift", "gamma", "erase", "add")),
    ):
        missing = [f for f in fields if not hasattr(heads, f)]
        if missing:
            raise TypeError(
                f"{op}: argument '{name}' must carry fields {', '.join(fields)} "
                f"(use ntm_fast.ops.{'ReadHeads' if name == 'read_heads' else 'WriteHeads'}); "
                f"{type(heads).__name__} lacks {', '.join(missing)}"
            )
    sizes = check_tensors(
        op,
        [
            ("memory", memory, "B N M"),
            ("read_heads.key", read_heads.key, "B R M"),
            ("read_heads.beta", read_heads.beta, "B R"),
            ("read_heads.gate", read_heads.gate, "B R"),
            ("read_heads.shift", read_heads.shift, "B R K"),
            ("read_heads.gamma", read_heads.gamma, "B R"),
            ("w_read_prev", w_read_prev, "B R N"),
            ("write_heads.key", write_heads.key, "B W M"),
            ("write_heads.beta", write_heads.beta, "B W"),
            ("write_heads.gate", write_heads.gate, "B W"),
            ("write_heads.shift", write_heads.shift, "B W K"),
            ("write_heads.gamma", write_heads.gamma, "B W"),
            ("write_heads.erase", write_heads.erase, "B W M"),
            ("write_heads.add", write_heads.add, "B W M"),
            ("w_write_prev", w_write_prev, "B W N"),
        ],
    )
    check_shift_width(op, "read_heads.shift", read_heads.shift)
    return sizes


def check_backend_dtype(op: str, backend: str, requested: str, name: str, value: torch.Tensor) -> None:
    """Refuse a dtype that backend `backend` (resolved from the `requested` name, e.g. 'auto') does not
    compute in.

    Called after check_tensors (every tensor argument then shares `value`'s dtype); names the argument, the
    dtypes the backend takes and the backends that take this dtype. Raises TypeError.
    """
    supported = BACKEND_DTYPES.get(backend)
    if supported is None or value.dtype in supported:
        return
    chosen = f"backend '{backend}'" + (f" (chosen by backend='{requested}')" if requested != backend else "")
    others = [b for b, dtypes in BACKEND_DTYPES.items() if value.dtype in dtypes]
    raise TypeError(
        f"{op}: argument '{name}' is {value.dtype}, which {chosen} does not support "
        f"(it takes {_dtype_names(supported)}); {str(value.dtype).replace('torch.', '')} is supported by "
        f"backend={' or '.join(repr(b) for b in others)}"
    )
