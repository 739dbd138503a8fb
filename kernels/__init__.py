"""Fused Triton kernels for ntm_fast (installed as ntm_fast.kernels): the `triton` backend.

One module per op, each holding its kernels, launcher and torch.autograd.Function:

* address.py     - addressing, Eq 5-9, all heads in one launch      address(memory, key, beta, gate, shift, gamma, w_prev)
* read_write.py  - read (Eq 2) and erase/add write (Eq 3-4)         read(memory, w), write(memory, w, erase, add)
* memory_step.py - a whole step's memory interaction, one launch    memory_step(memory, read_heads, write_heads, ...)

Every op is one kernel launch forward and one backward. Inputs arrive validated by ntm_fast.ops.
"""
from .address import address
from .memory_step import memory_step
from .read_write import read, write

__all__ = ["address", "read", "write", "memory_step"]
