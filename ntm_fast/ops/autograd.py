"""Autograd for every kernel backend, in one place.

A kernel backend (Triton in kernels/, the C++/CUDA extension behind ops/extension.py) exports plain
launchers, no autograd (docs/design.md, "Adding a backend"):

    address_forward(memory, heads: ReadHeads, w_prev, *, eps, tiny) -> w
    address_backward(memory, heads, w_prev, w, grad_w, *, eps, tiny) -> (d_memory, d_heads: ReadHeads, d_w_prev)
    read_forward(memory, w) -> reads                read_backward(memory, w, grad_reads) -> (d_memory, d_w)
    write_forward(memory, w, erase, add) -> memory  write_backward(memory, w, erase, add, grad_memory)
                                                        -> (d_memory, d_w, d_erase, d_add)
    memory_step_forward(memory, read_heads, write_heads, w_read_prev, w_write_prev, *, eps, tiny)
        -> (reads, w_read, w_write, new_memory)
    memory_step_backward(memory, read_heads, write_heads, w_read_prev, w_write_prev, w_read, w_write,
                         grad_reads, grad_w_read, grad_w_write, grad_memory, *, eps, tiny)
        -> (d_memory, d_read_heads: ReadHeads, d_write_heads: WriteHeads, d_w_read_prev, d_w_write_prev)

(``ReadHeads`` doubles as the addressing parameters of any head.) ε and the sharpening floor come from
reference.py and are passed to every launcher. Optionally a backend also exports the fused whole-step and
whole-sequence launchers (``step_forward`` ...; the C++ extension does), wrapped by ``FusedStep`` and
``FusedSequence`` below.

One save-for-backward policy: an op saves its inputs (made contiguous once; a slot-minor memory, the C++
kernels' own layout, stays as it is) and the weightings it returned, never a memory it returned or any
addressing intermediate: backward kernels recompute K, w_c, w_g and w_s from the inputs (FlashAttention's
trade).

Eager calls run ``KernelFunction`` (a plain autograd.Function: the cheapest call at small batches). Under
torch.compile the same op specs run as two registered custom ops, ``ntm_fast::kernel_forward`` and
``ntm_fast::kernel_backward`` (the op's name and the backend are string arguments), which the compiler sees
as opaque ops with fake implementations.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple

import torch
from torch import Tensor

from .heads import HeadLayout, ReadHeads, WriteHeads
from .reference import COSINE_EPS, sharpen_floor
from .shared import is_slot_minor

# Backend name -> launchers, filled by `kernel_ops`; the custom ops look their backend up here.
_KERNELS = {}


def _numerics(memory: Tensor) -> dict:
    return dict(eps=COSINE_EPS, tiny=sharpen_floor(memory.dtype))


def _dense(t: Tensor) -> Tensor:
    return t if is_slot_minor(t) else t.contiguous()


class KernelOp(NamedTuple):
    """One op in terms of a backend's launchers. forward(kernels, *inputs) -> outputs;
    backward(kernels, inputs, saved_outputs, grads) -> one gradient per input; saved: the indices of the
    outputs the backward reuses; fake(backend, *inputs) -> outputs' shapes and strides (for torch.compile)."""

    forward: Callable
    backward: Callable
    saved: tuple
    fake: Callable


# --- address (Eq 5-9) ------------------------------------------------------------------------------------
def _address_forward(kernels, memory, key, beta, gate, shift, gamma, w_prev):
    return (kernels.address_forward(memory, ReadHeads(key, beta, gate, shift, gamma), w_prev, **_numerics(memory)),)


def _address_backward(kernels, inputs, saved, grads):
    memory, key, beta, gate, shift, gamma, w_prev = inputs
    d_memory, d_heads, d_w_prev = kernels.address_backward(
        memory, ReadHeads(key, beta, gate, shift, gamma), w_prev, w=saved[0], grad_w=grads[0], **_numerics(memory))
    return (d_memory, *d_heads, d_w_prev)


# --- read (Eq 2) and write (Eq 3-4) ----------------------------------------------------------------------
def _read_forward(kernels, memory, w):
    return (kernels.read_forward(memory, w),)


def _read_backward(kernels, inputs, saved, grads):
    memory, w = inputs
    return kernels.read_backward(memory, w, grad_reads=grads[0])


def _write_forward(kernels, memory, w, erase, add):
    return (kernels.write_forward(memory, w, erase, add),)


def _write_backward(kernels, inputs, saved, grads):
    memory, w, erase, add = inputs
    return kernels.write_backward(memory, w, erase, add, grad_memory=grads[0])


# --- memory_step: every head addresses M_{t-1}, then the reads and the write -----------------------------
# Inputs, flat: memory, the 5 read-head tensors, the 7 write-head tensors, w_read_prev, w_write_prev.
def _step_heads(inputs):
    memory, *rest = inputs
    return memory, ReadHeads(*rest[:5]), WriteHeads(*rest[5:12]), rest[12], rest[13]


def _memory_step_forward(kernels, *inputs):
    memory, read_heads, write_heads, w_read_prev, w_write_prev = _step_heads(inputs)
    return kernels.memory_step_forward(memory, read_heads, write_heads, w_read_prev, w_write_prev,
                                       **_numerics(memory))


def _memory_step_backward(kernels, inputs, saved, grads):
    memory, read_heads, write_heads, w_read_prev, w_write_prev = _step_heads(inputs)
    grad_reads, grad_w_read, grad_w_write, grad_memory = grads
    d_memory, d_read, d_write, d_w_read_prev, d_w_write_prev = kernels.memory_step_backward(
        memory, read_heads, write_heads, w_read_prev, w_write_prev, w_read=saved[0], w_write=saved[1],
        grad_reads=grad_reads, grad_w_read=grad_w_read, grad_w_write=grad_w_write, grad_memory=grad_memory,
        **_numerics(memory))
    return (d_memory, *d_read, *d_write, d_w_read_prev, d_w_write_prev)


def _memory_step_fake(backend, *inputs):
    memory, read_heads, _, w_read_prev, w_write_prev = _step_heads(inputs)
    B, N, M = memory.shape
    # The C++ CPU kernels return the new memory slot-minor (their layout); the others row-major.
    new_memory = memory.new_empty((B, M, N)).transpose(1, 2) if backend == "cpp" else memory.new_empty((B, N, M))
    return (torch.empty_like(read_heads.key), torch.empty_like(w_read_prev), torch.empty_like(w_write_prev),
            new_memory)


KERNEL_OPS = {
    "address": KernelOp(_address_forward, _address_backward, saved=(0,),
                        fake=lambda backend, memory, *heads: (torch.empty_like(heads[-1]),)),
    "read": KernelOp(_read_forward, _read_backward, saved=(),
                     fake=lambda backend, memory, w: (memory.new_empty((w.shape[0], w.shape[1], memory.shape[2])),)),
    "write": KernelOp(_write_forward, _write_backward, saved=(),
                      fake=lambda backend, memory, *rest: (torch.empty_like(memory),)),
    "memory_step": KernelOp(_memory_step_forward, _memory_step_backward, saved=(1, 2), fake=_memory_step_fake),
}


# --- eager: one autograd.Function for every op ------------------------------------------------------------
class KernelFunction(torch.autograd.Function):
    """apply(op_name, backend, *inputs): KERNEL_OPS[op_name] run with the launchers of `backend`."""

    @staticmethod
    def forward(ctx, op_name, backend, *inputs):
        op, kernels = KERNEL_OPS[op_name], _KERNELS[backend]
        inputs = [_dense(t) for t in inputs]
        outputs = op.forward(kernels, *inputs)
        ctx.op_name, ctx.backend, ctx.num_inputs = op_name, backend, len(inputs)
        ctx.save_for_backward(*inputs, *(outputs[i] for i in op.saved))
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        saved, n = ctx.saved_tensors, ctx.num_inputs
        d_inputs = KERNEL_OPS[ctx.op_name].backward(_KERNELS[ctx.backend], saved[:n], saved[n:], grads)
        return (None, None, *d_inputs)


# --- torch.compile: the same specs as two opaque custom ops ----------------------------------------------
@torch.library.custom_op("ntm_fast::kernel_forward", mutates_args=())
def kernel_forward(op_name: str, backend: str, inputs: List[Tensor]) -> List[Tensor]:
    return list(KERNEL_OPS[op_name].forward(_KERNELS[backend], *[_dense(t) for t in inputs]))


@kernel_forward.register_fake
def _(op_name, backend, inputs):
    return list(KERNEL_OPS[op_name].fake(backend, *inputs))


@torch.library.custom_op("ntm_fast::kernel_backward", mutates_args=())
def kernel_backward(op_name: str, backend: str, inputs: List[Tensor], saved: List[Tensor],
                    grads: List[Tensor]) -> List[Tensor]:
    inputs = [_dense(t) for t in inputs]
    return list(KERNEL_OPS[op_name].backward(_KERNELS[backend], inputs, saved, grads))


@kernel_backward.register_fake
def _(op_name, backend, inputs, saved, grads):
    return [torch.empty_like(t) for t in inputs]


def _setup_context(ctx, inputs, output):
    op_name, backend, op_inputs = inputs
    ctx.op_name, ctx.backend, ctx.num_inputs = op_name, backend, len(op_inputs)
    ctx.save_for_backward(*op_inputs, *(output[i] for i in KERNEL_OPS[op_name].saved))


def _compiled_backward(ctx, grads):
    saved, n = ctx.saved_tensors, ctx.num_inputs
    return None, None, kernel_backward(ctx.op_name, ctx.backend, list(saved[:n]), list(saved[n:]), list(grads))


kernel_forward.register_autograd(_compiled_backward, setup_context=_setup_context)


def run(op_name: str, backend: str, *inputs):
    """Op `op_name` on `backend`'s kernels: the eager Function, or the custom op under torch.compile."""
    if torch.compiler.is_compiling():
        outputs = kernel_forward(op_name, backend, list(inputs))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]
    return KernelFunction.apply(op_name, backend, *inputs)


class KernelOps:
    """The op-level interface (address, read, write, memory_step: what dispatch hands to the op API) of a
    backend given by its launchers."""

    def __init__(self, backend: str, kernels):
        _KERNELS[backend] = kernels
        self.backend, self.kernels = backend, kernels

    def address(self, memory, key, beta, gate, shift, gamma, w_prev):
        return run("address", self.backend, memory, key, beta, gate, shift, gamma, w_prev)

    def read(self, memory, w):
        return run("read", self.backend, memory, w)

    def write(self, memory, w, erase, add):
        return run("write", self.backend, memory, w, erase, add)

    def memory_step(self, memory, read_heads, write_heads, w_read_prev, w_write_prev):
        return run("memory_step", self.backend, memory, *read_heads, *write_heads, w_read_prev, w_write_prev)


# --- the whole time step and the whole sequence as one node (backends with fused-step launchers) --------
def _controller_weights(lstm: bool, weights):
    """(W_ih, b_ih, W_hh, b_hh, W_heads, b_heads, W_out, b_out) from the model's parameter list (W_hh and
    b_hh None for a feedforward controller)."""
    controller = weights[:4] if lstm else (*weights[:2], None, None)
    return (*controller, *weights[-4:])


def _controller_grads(lstm: bool, dW_ih, db_ih, dW_hh):
    # nn.LSTMCell has two biases that enter the gates as a sum: both get the same gradient.
    return (dW_ih, db_ih, dW_hh, db_ih) if lstm else (dW_ih, db_ih)


class FusedStep(torch.autograd.Function):
    """apply(kernels, layout, lstm, x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, *weights)
    -> (logits, h, c, reads [B, R*M], w_read, w_write, memory): one NTM time step, one launcher call each way.
    weights: the model's (W_ih, b_ih[, W_hh, b_hh], W_heads, b_heads, W_out, b_out). h_prev and c_prev are None
    for a feedforward controller. Saves what the step's backward launcher asks for (`saved`)."""

    @staticmethod
    def forward(ctx, kernels, layout: HeadLayout, lstm, x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev,
                memory, *weights):
        outputs, saved = kernels.step_forward(
            x, h_prev, c_prev, reads_prev, w_read_prev, w_write_prev, memory, _controller_weights(lstm, weights),
            layout, **_numerics(memory))
        ctx.kernels, ctx.layout, ctx.lstm, ctx.num_x = kernels, layout, lstm, x.shape[1]
        ctx.save_for_backward(*saved)
        logits, h, c, reads, w_read, w_write, new_memory = outputs
        return logits, h, (c if lstm else None), reads, w_read, w_write, new_memory

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_logits, d_h, d_c, d_reads, d_w_read, d_w_write, d_memory):
        d_u, d_h_prev, d_c_prev, d_w_read_prev, d_w_write_prev, d_memory_prev, dW_ih, db_ih, dW_hh, dW_heads, \
            db_heads, dW_out, db_out = ctx.kernels.step_backward(
                ctx.saved_tensors, (d_logits, d_h, d_c, d_reads, d_w_read, d_w_write, d_memory), ctx.layout,
                **_numerics(d_memory))
        n = ctx.num_x
        return (None, None, None, d_u[:, :n], d_h_prev, d_c_prev, d_u[:, n:], d_w_read_prev, d_w_write_prev,
                d_memory_prev, *_controller_grads(ctx.lstm, dW_ih, db_ih, dW_hh), dW_heads, db_heads, dW_out, db_out)


class FusedSequence(torch.autograd.Function):
    """apply(kernels, layout, lstm, keep_tape, x [T, B, X], h0, c0, reads0, w_read0, w_write0, memory0,
    *weights) -> logits [T, B, Y]: a whole sequence, one launcher call each way. keep_tape: whether a backward
    may follow (else the launcher frees each step's tensors as it goes). The tape of per-step tensors is the
    launcher's own object; x and the initial state are saved too, so that an in-place change of one before the
    backward raises autograd's error instead of giving wrong gradients."""

    @staticmethod
    def forward(ctx, kernels, layout: HeadLayout, lstm, keep_tape, x, h0, c0, reads0, w_read0, w_write0, memory0,
                *weights):
        state = [None if t is None else t.contiguous() for t in (h0, c0, reads0, w_read0, w_write0, memory0)]
        controller_weights = _controller_weights(lstm, weights)
        logits, ctx.tape = kernels.sequence_forward(x.contiguous(), *state, controller_weights, layout, keep_tape,
                                                    **_numerics(x))
        ctx.kernels, ctx.lstm = kernels, lstm
        W_ih, _, W_hh, _, W_heads, _, W_out, _ = controller_weights
        ctx.save_for_backward(W_ih, W_hh, W_heads, W_out, x, *state)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_logits):
        d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0, dW_ih, db_ih, dW_hh, dW_heads, db_heads, \
            dW_out, db_out = ctx.kernels.sequence_backward(ctx.tape, d_logits.contiguous(), ctx.saved_tensors[:4])
        return (None, None, None, None, d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0,
                *_controller_grads(ctx.lstm, dW_ih, db_ih, dW_hh), dW_heads, db_heads, dW_out, db_out)
