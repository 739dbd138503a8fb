"""Inputs for the op tests: random and adversarial, at any size, in any dtype.

Each maker returns a dict of keyword arguments for the op (heads as ntm_fast.ops.ReadHeads/WriteHeads).
`kind` picks the case:
  random    - generic activated parameters
  one_hot   - one-hot previous weightings and shifts, gate 0 or 1, γ = 50 (exact zeros everywhere)
  zero_rows - about half the memory rows all zero, plus one all-zero key
  extreme   - β = 1e3 and γ = 50 with a sharp memory

`backend_or_skip` is how every kernel test meets a backend that cannot run here.
"""
import os

import pytest
import torch

from ntm_fast.ops.dispatch import unavailable_reason
from ntm_fast.ops import ReadHeads, WriteHeads

# Backends whose absence is a failure, not a skip (CI sets NTM_FAST_REQUIRE_BACKENDS=triton,cpp).
REQUIRED = {b for b in os.environ.get("NTM_FAST_REQUIRE_BACKENDS", "").split(",") if b}


def backend_or_skip(name, device_type):
    """`name` if it runs on `device_type` tensors here; else skip saying why (fail if it is REQUIRED)."""
    reason = unavailable_reason(name, device_type)
    if reason is not None:
        if name in REQUIRED:
            pytest.fail(f"backend {name!r} is required (NTM_FAST_REQUIRE_BACKENDS) but unavailable: {reason}")
        pytest.skip(f"backend {name!r} unavailable: {reason}")
    return name

KINDS = ("random", "one_hot", "zero_rows", "extreme")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def head_params(B, H, N, M, S, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    g = _gen(seed)
    r = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    n = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    K = 2 * S + 1
    p = dict(
        key=n(B, H, M),
        beta=r(B, H) * 10,
        gate=r(B, H),
        shift=torch.softmax(n(B, H, K) * 2, -1),
        gamma=1 + r(B, H) * 4,
        w_prev=torch.softmax(n(B, H, N) * 2, -1),
    )
    if kind == "one_hot":
        p["w_prev"] = torch.nn.functional.one_hot(torch.randint(0, N, (B, H), generator=g), N).double()
        p["shift"] = torch.nn.functional.one_hot(torch.randint(0, K, (B, H), generator=g), K).double()
        p["gate"] = (r(B, H) > 0.5).double()
        p["gamma"] = torch.full((B, H), 50.0, dtype=torch.float64)
    elif kind == "zero_rows":
        p["key"][0, 0] = 0.0
    elif kind == "extreme":
        p["beta"] = torch.full((B, H), 1e3, dtype=torch.float64)
        p["gamma"] = torch.full((B, H), 50.0, dtype=torch.float64)
    return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}


def memory(B, N, M, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    g = _gen(seed + 1000)
    mem = torch.randn(B, N, M, generator=g, dtype=torch.float64)
    if kind == "zero_rows":
        mem[:, ::2] = 0.0
    elif kind == "extreme":
        mem = mem * 3
    return mem.to(dtype=dtype, device=device)


def address_inputs(B, N, M, H, S, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    p = head_params(B, H, N, M, S, kind, seed, dtype, device)
    return dict(memory=memory(B, N, M, kind, seed, dtype, device), **p)


def read_inputs(B, N, M, H, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    p = head_params(B, H, N, M, 0, kind, seed, dtype, device)
    return dict(memory=memory(B, N, M, kind, seed, dtype, device), w=p["w_prev"])


def write_inputs(B, N, M, W, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    g = _gen(seed + 2000)
    p = head_params(B, W, N, M, 0, kind, seed, dtype, device)
    erase = torch.rand(B, W, M, generator=g, dtype=torch.float64)
    if kind in ("one_hot", "extreme"):
        erase = (erase > 0.5).double()  # full erases and no erases
    add = torch.randn(B, W, M, generator=g, dtype=torch.float64)
    return dict(memory=memory(B, N, M, kind, seed, dtype, device), w=p["w_prev"],
                erase=erase.to(dtype=dtype, device=device), add=add.to(dtype=dtype, device=device))


def memory_step_inputs(B, N, M, R, W, S, kind="random", seed=0, dtype=torch.float64, device="cpu"):
    rp = head_params(B, R, N, M, S, kind, seed, dtype, device)
    wi = write_inputs(B, N, M, W, kind, seed + 1, dtype, device)
    wp = head_params(B, W, N, M, S, kind, seed + 2, dtype, device)
    return dict(
        memory=memory(B, N, M, kind, seed, dtype, device),
        read_heads=ReadHeads(rp["key"], rp["beta"], rp["gate"], rp["shift"], rp["gamma"]),
        write_heads=WriteHeads(wp["key"], wp["beta"], wp["gate"], wp["shift"], wp["gamma"], wi["erase"], wi["add"]),
        w_read_prev=rp["w_prev"],
        w_write_prev=wp["w_prev"],
    )


def flat_tensors(inputs):
    """The input tensors of an op call, in a fixed order (heads expanded), for grads and gradcheck."""
    out = []
    for v in inputs.values():
        out.extend(v if isinstance(v, tuple) else [v])
    return out


def rebuild(inputs, tensors):
    """Inverse of flat_tensors: the same call structure with `tensors` substituted."""
    it = iter(tensors)
    out = {}
    for k, v in inputs.items():
        out[k] = type(v)(*[next(it) for _ in v]) if isinstance(v, tuple) else next(it)
    return out
