"""The Neural Turing Machine: a controller, R read heads and W write heads around one memory.

One time step (docs/design.md, "The math"):
    controller([x_t; r_{t-1}]) -> head parameters -> every head addresses M_{t-1} -> reads r_t
    -> write gives M_t -> y_t = Linear([h_t; r_t]) (logits).
The memory interaction of a step is a single `ntm_fast.ops.memory_step` call, so a fused backend covers
all of it; with the C++ extension's CPU kernels the whole step is one autograd node, and NTM.forward runs
the whole sequence as one (fused.py). The head parameters' layout and activations (Section 3.3) are
ntm_fast.ops.HeadLayout's.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..ops import HeadLayout, memory_step
from . import fused

CONTROLLERS = ("lstm", "feedforward")
MEMORY_INITS = ("constant", "learned", "random")
ZERO_SHIFT_BIAS = 2.0  # initial logit bias of shift 0 in every head (see NTMCell.__init__)


class NTMState(NamedTuple):
    """Recurrent state between steps. controller: LSTM (h, c) [B, C] each (None for feedforward);
    reads [B, R*M]; w_read [B, R, N]; w_write [B, W, N]; memory [B, N, M]."""

    controller: tuple
    reads: torch.Tensor
    w_read: torch.Tensor
    w_write: torch.Tensor
    memory: torch.Tensor


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"argument '{name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_positive_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"argument '{name}' must be an integer >= {minimum}, got {value!r}")


class NTMCell(nn.Module):
    """One NTM time step. `forward(x [B, X], state) -> (logits [B, Y], next NTMState)`."""

    def __init__(self, input_size, output_size, *, controller="lstm", controller_size=100, memory_slots=128,
                 memory_width=20, read_heads=1, write_heads=1, shift_range=1, memory_init="constant",
                 backend="auto"):
        super().__init__()
        for name, value, minimum in (("input_size", input_size, 1), ("output_size", output_size, 1),
                                     ("controller_size", controller_size, 1), ("memory_slots", memory_slots, 1),
                                     ("memory_width", memory_width, 1), ("read_heads", read_heads, 1),
                                     ("write_heads", write_heads, 1), ("shift_range", shift_range, 0)):
            _check_positive_int(name, value, minimum)
        _check_choice("controller", controller, CONTROLLERS)
        _check_choice("memory_init", memory_init, MEMORY_INITS)
        self.input_size, self.output_size = input_size, output_size
        self.controller_kind, self.controller_size = controller, controller_size
        self.N, self.M, self.R, self.W, self.S = memory_slots, memory_width, read_heads, write_heads, shift_range
        self.memory_init, self.backend = memory_init, backend
        N, M, R, W, C = self.N, self.M, self.R, self.W, controller_size
        H = R + W

        ctrl_in = input_size + R * M
        self.controller = nn.LSTMCell(ctrl_in, C) if controller == "lstm" else nn.Linear(ctrl_in, C)
        # One linear layer emits every head parameter (the split and activations: HeadLayout).
        self.layout = HeadLayout(R, W, M, shift_range)
        self.heads = nn.Linear(C, self.layout.width)
        # Every head starts out mostly staying where it is: its shift distribution (Eq. 8) puts e²/(e² + 2S) on
        # shift 0 (0.79 with S = 1; logit bias +2 against 0 for the other shifts) instead of 1/(2S + 1), which
        # blurs the weighting at every step. With the uniform start, copy models often learnt to let the read
        # head diffuse over the input and find the first slot again at the delimiter, which fails beyond the
        # training lengths; with this start 5 of 5 seeds generalised to length 120 (docs/tasks.md, "Copy over
        # five seeds").
        with torch.no_grad():
            self.heads.bias[self.layout.zero_shift_columns()] += ZERO_SHIFT_BIAS
        self.output = nn.Linear(C + R * M, output_size)

        # Learned initial state: LSTM state, read vectors, weightings (as logits).
        if controller == "lstm":
            self.h0 = nn.Parameter(torch.zeros(C))
            self.c0 = nn.Parameter(torch.zeros(C))
        self.read0 = nn.Parameter(torch.randn(R * M) * 0.01)
        # Initial weightings start focused on slot 0 (learned from there). A uniform start cannot work
        # with constant memory: every row stays identical under uniform writes, content addressing stays
        # uniform, and shifting a uniform weighting changes nothing -- the heads could never focus.
        w_logits0 = torch.zeros(H, N)
        w_logits0[:, 0] = 10.0
        self.w_logits0 = nn.Parameter(w_logits0)
        self.memory_scale = 1.0 / math.sqrt(N + M)
        if memory_init == "learned":
            self.memory0 = nn.Parameter(torch.empty(N, M).uniform_(-self.memory_scale, self.memory_scale))
        elif memory_init == "constant":
            self.register_buffer("memory0", torch.full((N, M), 1e-6))

    def initial_state(self, batch_size: int) -> NTMState:
        B, N, M, R = batch_size, self.N, self.M, self.R
        if self.memory_init == "random":
            memory = torch.empty(B, N, M, device=self.read0.device, dtype=self.read0.dtype)
            memory.uniform_(-self.memory_scale, self.memory_scale)
        else:
            memory = self.memory0.expand(B, N, M)
        w0 = torch.softmax(self.w_logits0, dim=-1).expand(B, -1, -1)
        return NTMState(
            controller=(self.h0.expand(B, -1), self.c0.expand(B, -1)) if self.controller_kind == "lstm" else None,
            reads=self.read0.expand(B, -1),
            w_read=w0[:, :R],
            w_write=w0[:, R:],
            memory=memory,
        )

    @property
    def head_sizes(self) -> tuple:
        return self.layout.sizes

    def head_parameters(self, h):
        """Controller output h [B, C] -> activated (ReadHeads, WriteHeads)."""
        return self.layout.activate(self.heads(h))

    def controller_step(self, x, reads_prev, controller_state):
        """The controller on [x_t; r_{t-1}] (Section 2): x [B, X], reads_prev [B, R*M] -> (h [B, C], the
        next controller state: (h, c) for an LSTM, None for a feedforward controller)."""
        ctrl_in = torch.cat([x, reads_prev], dim=-1)
        if self.controller_kind == "lstm":
            h, c = self.controller(ctrl_in, controller_state)
            return h, (h, c)
        return torch.tanh(self.controller(ctrl_in)), None

    def forward(self, x, state: NTMState):
        if fused.usable(self, x):  # the C++ kernels: the whole step as one autograd node
            logits, controller_state, reads, w_read, w_write, memory = fused.step(self, x, state)
            return logits, NTMState(controller_state, reads, w_read, w_write, memory)
        h, controller_state = self.controller_step(x, state.reads, state.controller)
        read_heads, write_heads = self.head_parameters(h)
        reads, w_read, w_write, memory = memory_step(
            state.memory, read_heads, write_heads, state.w_read, state.w_write, backend=self.backend)
        reads = reads.reshape(x.shape[0], -1)
        logits = self.output(torch.cat([h, reads], dim=-1))
        return logits, NTMState(controller_state, reads, w_read, w_write, memory)


class NTM(nn.Module):
    """A Neural Turing Machine over sequences: `forward(x [T, B, X]) -> logits [T, B, Y]`.

    With `return_trace=True` it returns `(logits, trace)` where trace holds the weightings of every step:
    `read_weights [T, B, R, N]` and `write_weights [T, B, W, N]`. The whole sequence runs as one autograd
    node where the backend has the launchers for it (`cpp` on CPU, `triton` on CUDA); `fuse_sequence = False`
    runs it one step at a time instead.
    """

    def __init__(self, input_size, output_size, *, controller="lstm", controller_size=100, memory_slots=128,
                 memory_width=20, read_heads=1, write_heads=1, shift_range=1, memory_init="constant",
                 backend="auto"):
        super().__init__()
        self.cell = NTMCell(input_size, output_size, controller=controller, controller_size=controller_size,
                            memory_slots=memory_slots, memory_width=memory_width, read_heads=read_heads,
                            write_heads=write_heads, shift_range=shift_range, memory_init=memory_init,
                            backend=backend)
        # Where the backend can, forward runs the whole sequence as one node (model/fused.py); False runs it
        # step by step (to compare the two, e.g. `ntm-fast bench`'s per-step contenders).
        self.fuse_sequence = True

    @property
    def backend(self):
        return self.cell.backend

    @backend.setter
    def backend(self, name):
        self.cell.backend = name

    def config(self) -> dict:
        """The constructor arguments, to rebuild this model (saved in checkpoints)."""
        c = self.cell
        return dict(input_size=c.input_size, output_size=c.output_size, controller=c.controller_kind,
                    controller_size=c.controller_size, memory_slots=c.N, memory_width=c.M, read_heads=c.R,
                    write_heads=c.W, shift_range=c.S, memory_init=c.memory_init)

    def forward(self, x, return_trace: bool = False):
        if (not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.cell.input_size
                or x.shape[0] < 1 or x.shape[1] < 1):
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"NTM.forward: argument 'x' must have shape [T, B, X] with T, B >= 1 and X = "
                             f"{self.cell.input_size}, got {got}")
        param = self.cell.read0
        if x.dtype != param.dtype or x.device != param.device:
            raise ValueError(f"NTM.forward: argument 'x' is {x.dtype} on {x.device} but the model is "
                             f"{param.dtype} on {param.device}")
        state = self.cell.initial_state(x.shape[1])
        if self.fuse_sequence and not return_trace and fused.sequence_usable(self.cell, x[0]):
            return fused.sequence(self.cell, x, state)  # the whole sequence in one launcher call each way
        logits, w_reads, w_writes = [], [], []
        for x_t in x:
            y_t, state = self.cell(x_t, state)
            logits.append(y_t)
            if return_trace:
                w_reads.append(state.w_read.detach())
                w_writes.append(state.w_write.detach())
        logits = torch.stack(logits)
        if return_trace:
            return logits, {"read_weights": torch.stack(w_reads), "write_weights": torch.stack(w_writes)}
        return logits
