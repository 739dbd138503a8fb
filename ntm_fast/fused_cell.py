"""One whole NTM time step as a single autograd node, and a whole sequence as one, for the C++ extension's
CPU kernels.

`NTMCell.forward` computes a step as ~30 tensor ops (controller, head activations, memory interaction,
output layer), and autograd records a node for most of them. At the batch sizes of NTM training on CPU the
per-op and per-node overheads (Python dispatch, allocation, the autograd engine) cost as much as the fused
memory kernel itself. `_Step` makes the whole step one autograd node whose forward and backward are one C++
call each (csrc/ntm_cell.cpp: `step_forward`, `step_backward`): the matrix products through ATen, one
hand-written pass per elementwise part (LSTM gates, the head activations and their derivatives), the fused
memory_step kernels in between; the backward is written out by hand. NTMCell.forward uses it.

`_Sequence` runs those same step functions over a whole sequence in one C++ call each way
(`sequence_forward`, `sequence_backward`), one batch chunk per thread from the first step to the last, and
sums the weight gradients over the steps. Per step there is then no Python, no autograd node and no point
where the threads wait for each other. NTM.forward uses it (unless it returns a trace of the weightings).

Math (Section 3.3 activations; `nn.LSTMCell`'s gate order i, f, g, o):
    u = [x; r_prev];  gates = u W_ihᵀ + b_ih + h_prev W_hhᵀ + b_hh   (LSTM)   or   h = tanh(u W_ihᵀ + b_ih)
    c = σ(f)·c_prev + σ(i)·tanh(g);  h = σ(o)·tanh(c)
    p = h W_headsᵀ + b_heads = [key H·M | β H | g H | s H·K | γ H | erase W·M | add W·M]
    β = softplus, g = σ, s = softmax over K, γ = 1 + softplus, erase = σ, add and key linear
    (r, w_r, w_w, M') = memory_step(M, heads, w_r_prev, w_w_prev)            (Eq 2-9, fused kernel)
    y = [h; r] W_outᵀ + b_out
Tested against the unfused cell (same backend) and the reference in tests/test_fused_cell.py.
"""
from __future__ import annotations

import torch

from . import extension


class _Step(torch.autograd.Function):
    """apply(cell, x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, *weights) ->
    (logits, h, c, reads [B, R*M], w_read, w_write, memory). weights: W_ih, b_ih, W_hh, b_hh (LSTM) or
    W_ih, b_ih (feedforward), then W_heads, b_heads, W_out, b_out. h_prev and c_prev are None for a
    feedforward controller. Forward and backward are one C++ call each (csrc/ntm_cell.cpp: step_forward,
    step_backward), around the fused memory_step kernels."""

    @staticmethod
    def forward(ctx, cell, x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, *weights):
        lstm = cell.controller_kind == "lstm"
        W_ih, b_ih, W_hh, b_hh = weights[:4] if lstm else (*weights[:2], None, None)
        W_hd, b_hd, W_out, b_out = weights[-4:]
        x, reads_prev = x.contiguous(), reads_prev.contiguous()
        if lstm:
            h_prev, c_prev = h_prev.contiguous(), c_prev.contiguous()
        layout = dict(head_sizes=list(cell.head_sizes), **extension._numerics(x.dtype))
        logits, h, c, reads, w_read, w_write, new_memory, u, tanh_c, gates, p, hr, *heads = extension._kernels(
            x).step_forward(x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, W_ih, b_ih, W_hh,
                            b_hh, W_hd, b_hd, W_out, b_out, **layout)
        ctx.cell, ctx.lstm, ctx.layout = cell, lstm, layout
        ctx.save_for_backward(memory, w_read_prev, w_write_prev, u, h_prev, c_prev, h, tanh_c, gates, p, hr, W_ih,
                              W_hh, W_hd, W_out, *heads)
        return logits, h, (c if lstm else None), reads, w_read, w_write, new_memory

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_logits, d_h, d_c, d_reads, d_w_read, d_w_write, d_memory):
        memory, w_read_prev, w_write_prev, u, h_prev, c_prev, h, tanh_c, gates, p, hr, W_ih, W_hh, W_hd, W_out, \
            *heads = ctx.saved_tensors
        d_u, d_h_prev, d_c_prev, d_w_read_prev, d_w_write_prev, d_mem_prev, dW_ih, db_ih, dW_hh, dW_hd, db_hd, \
            dW_out, db_out = extension._kernels(h).step_backward(
                d_logits.contiguous(), d_h, d_c.contiguous() if ctx.lstm else None, d_reads, d_w_read, d_w_write,
                d_memory, memory, w_read_prev, w_write_prev, heads, u, h_prev, c_prev, h, tanh_c, gates, p, hr,
                W_ih, W_hh, W_hd, W_out, **ctx.layout)
        n_x = u.shape[1] - ctx.cell.R * ctx.cell.M
        controller = (dW_ih, db_ih, dW_hh, db_ih) if ctx.lstm else (dW_ih, db_ih)
        return (None, d_u[:, :n_x], d_h_prev, d_c_prev, d_u[:, n_x:], d_w_read_prev, d_w_write_prev, d_mem_prev,
                *controller, dW_hd, db_hd, dW_out, db_out)


class _Sequence(torch.autograd.Function):
    """apply(cell, keep_tape, x [T, B, X], h0, c0, reads0, w_read0, w_write0, memory0, *weights) -> logits
    [T, B, Y]. keep_tape: whether a backward may follow (else every step's tensors are freed as it goes).

    A whole sequence through the fused step in two C++ calls (csrc/ntm_cell.cpp: sequence_forward,
    sequence_backward). The batch is cut into one chunk per thread and each thread runs its chunk through
    every step alone: the per-step autograd nodes and Python, and the threads' joins after every matrix
    product and kernel of a step, are gone, and the small ATen calls that ran on one thread run on all of
    them. Each step computes what _Step computes for those rows; the weight gradients are summed over a chunk's
    steps, then over the chunks. The tape (every step's saved tensors) stays on the C++ side."""

    @staticmethod
    def forward(ctx, cell, keep_tape, x, h0, c0, reads0, w_read0, w_write0, memory0, *weights):
        lstm = cell.controller_kind == "lstm"
        W_ih, b_ih, W_hh, b_hh = weights[:4] if lstm else (*weights[:2], None, None)
        W_hd, b_hd, W_out, b_out = weights[-4:]
        state = [None if t is None else t.contiguous() for t in (h0, c0, reads0, w_read0, w_write0, memory0)]
        numerics = extension._numerics(x.dtype)
        logits, ctx.tape = extension._kernels(x).sequence_forward(
            x.contiguous(), *state, W_ih, b_ih, W_hh, b_hh, W_hd, b_hd, W_out, b_out, list(cell.head_sizes),
            numerics["cosine_eps"], numerics["sharpen_floor"], keep_tape)
        ctx.lstm = lstm
        # The tape holds the initial state's rows: saved here too, so that an in-place change of one before the
        # backward raises autograd's error instead of giving wrong gradients.
        ctx.save_for_backward(W_ih, W_hh, W_hd, W_out, *state)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_logits):
        W_ih, W_hh, W_hd, W_out = ctx.saved_tensors[:4]
        d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0, dW_ih, db_ih, dW_hh, dW_hd, db_hd, dW_out, \
            db_out = extension._kernels(d_logits).sequence_backward(ctx.tape, d_logits.contiguous(), W_ih, W_hh,
                                                                     W_hd, W_out)
        controller = (dW_ih, db_ih, dW_hh, db_ih) if ctx.lstm else (dW_ih, db_ih)
        return (None, None, d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0, *controller, dW_hd,
                db_hd, dW_out, db_out)


def usable(cell, x: torch.Tensor) -> bool:
    """Whether `cell`'s step can run fused: the extension's kernels resolve for CPU tensors of a dtype they
    take, and no torch.compile is tracing (the compiler sees the registered per-op custom ops instead)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.compiler.is_compiling():
        return False
    from .backends import resolve

    return resolve(cell.backend, x.device) is extension.OPS


def _weights(cell) -> tuple:
    """The cell's parameters in the order _Step and _Sequence take them."""
    if cell.controller_kind == "lstm":
        c = cell.controller
        controller = (c.weight_ih, c.bias_ih, c.weight_hh, c.bias_hh)
    else:
        controller = (cell.controller.weight, cell.controller.bias)
    return controller + (cell.heads.weight, cell.heads.bias, cell.output.weight, cell.output.bias)


def step(cell, x, state):
    """NTMCell.forward's result for one step, through _Step (see the module docstring)."""
    lstm = cell.controller_kind == "lstm"
    h_prev, c_prev = state.controller if lstm else (None, None)
    logits, h, c, reads, w_read, w_write, memory = _Step.apply(
        cell, x, h_prev, c_prev, state.reads, state.w_read, state.w_write, state.memory, *_weights(cell))
    return logits, (h, c) if lstm else None, reads, w_read, w_write, memory


def sequence(cell, x, state):
    """The logits [T, B, Y] of `cell` run over x [T, B, X] (T >= 1) from `state`, through _Sequence."""
    h0, c0 = state.controller if cell.controller_kind == "lstm" else (None, None)
    inputs = (x, h0, c0, state.reads, state.w_read, state.w_write, state.memory, *_weights(cell))
    keep_tape = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _Sequence.apply(cell, keep_tape, *inputs)
