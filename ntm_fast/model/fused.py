"""When an NTM time step, or a whole sequence, runs as one fused autograd node.

`NTMCell.forward` computes a step as ~30 tensor ops (controller, head activations, memory interaction,
output layer), and autograd records a node for most of them. At the batch sizes of NTM training on CPU the
per-op and per-node overheads (Python dispatch, allocation, the autograd engine) cost as much as the fused
memory kernel itself, and on a GPU the ~100 launches per step leave it waiting for the host. So where the
backend has the launchers, the whole step is one node (`ops.autograd.FusedStep`; the C++ extension on CPU,
csrc/ntm_cell.cpp) and the whole sequence is one node (`ops.autograd.FusedSequence`; the C++ extension on
CPU, each thread taking a batch chunk through every time step, and the Triton backend, one persistent
kernel each way over all time steps, kernels/sequence.py). The backwards are written out by hand.

Math (Section 3.3 activations; `nn.LSTMCell`'s gate order i, f, g, o):
    u = [x; r_prev];  gates = u W_ihᵀ + b_ih + h_prev W_hhᵀ + b_hh   (LSTM)   or   h = tanh(u W_ihᵀ + b_ih)
    c = σ(f)·c_prev + σ(i)·tanh(g);  h = σ(o)·tanh(c)
    p = h W_headsᵀ + b_heads, split and activated as ops.HeadLayout says
    (r, w_r, w_w, M') = memory_step(M, heads, w_r_prev, w_w_prev)            (Eq 2-9, fused kernel)
    y = [h; r] W_outᵀ + b_out
Tested against the unfused cell (same backend) and the reference in tests/test_fused_cell.py.
"""
from __future__ import annotations

import logging

import torch

from ..ops import dispatch
from ..ops.autograd import FusedSequence, FusedStep

log = logging.getLogger("ntm_fast")
_logged = set()


def _fused_kernels(cell, x: torch.Tensor, devices: str):
    """The launchers of `cell`'s backend for x's device if they list that device type in `devices` (the
    attribute FUSED_STEP_DEVICES or FUSED_SEQUENCE_DEVICES), take x's dtype and sizes, and no torch.compile
    is tracing (the compiler sees the per-op custom ops instead); else None. Launchers that decline a
    sequence (`sequence_unsupported`) say why, logged once per reason."""
    if torch.compiler.is_compiling():
        return None
    kernels = getattr(dispatch.resolved_ops(cell.backend, x.device.type), "kernels", None)
    if x.device.type not in getattr(kernels, devices, ()):
        return None
    unsupported = getattr(kernels, "sequence_unsupported", None) if devices == "FUSED_SEQUENCE_DEVICES" else None
    reason = unsupported(x, cell.layout) if unsupported else (
        None if x.dtype in (torch.float32, torch.float64) else f"{x.dtype} input")
    if reason is not None:
        if devices == "FUSED_SEQUENCE_DEVICES" and reason not in _logged:
            _logged.add(reason)
            log.info("ntm_fast: the whole sequence runs step by step: %s", reason)
        return None
    return kernels


def step_kernels(cell, x: torch.Tensor):
    """The launchers that run `cell`'s whole step on x [B, X] as one node, or None."""
    return _fused_kernels(cell, x, "FUSED_STEP_DEVICES")


def sequence_kernels(cell, x: torch.Tensor):
    """The launchers that run `cell` over a whole sequence of x[0]'s kind as one node, or None."""
    return _fused_kernels(cell, x, "FUSED_SEQUENCE_DEVICES")


def usable(cell, x: torch.Tensor) -> bool:
    """Whether `cell`'s step runs as one node on x [B, X]."""
    return step_kernels(cell, x) is not None


def sequence_usable(cell, x: torch.Tensor) -> bool:
    """Whether `cell` runs a whole sequence of steps like x [B, X] as one node."""
    return sequence_kernels(cell, x) is not None


def weights(cell) -> tuple:
    """The cell's parameters in the order the fused nodes take them."""
    if cell.controller_kind == "lstm":
        c = cell.controller
        controller = (c.weight_ih, c.bias_ih, c.weight_hh, c.bias_hh)
    else:
        controller = (cell.controller.weight, cell.controller.bias)
    return controller + (cell.heads.weight, cell.heads.bias, cell.output.weight, cell.output.bias)


def step(cell, x, state):
    """NTMCell.forward's result for one step, as one node: (logits, controller state, reads, w_read, w_write,
    memory)."""
    lstm = cell.controller_kind == "lstm"
    h_prev, c_prev = state.controller if lstm else (None, None)
    logits, h, c, reads, w_read, w_write, memory = FusedStep.apply(
        step_kernels(cell, x), cell.layout, lstm, x, h_prev, c_prev, state.reads, state.w_read, state.w_write,
        state.memory, *weights(cell))
    return logits, (h, c) if lstm else None, reads, w_read, w_write, memory


def sequence(cell, x, state):
    """The logits [T, B, Y] of `cell` run over x [T, B, X] (T >= 1) from `state`, as one node."""
    lstm = cell.controller_kind == "lstm"
    h0, c0 = state.controller if lstm else (None, None)
    inputs = (x, h0, c0, state.reads, state.w_read, state.w_write, state.memory, *weights(cell))
    keep_tape = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return FusedSequence.apply(sequence_kernels(cell, x[0]), cell.layout, lstm, keep_tape, *inputs)
