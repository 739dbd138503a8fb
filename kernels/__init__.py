"""Fused Triton kernels for ntm_fast (installed as ntm_fast.kernels): the `triton` backend's launchers.

One module per op, each holding its kernels and their plain forward/backward launchers (the autograd is
ntm_fast/ops/autograd.py's, the protocol is documented there):

* address.py     - addressing, Eq 5-9, all heads in one launch     address_forward / address_backward
* read_write.py  - read (Eq 2) and erase/add write (Eq 3-4)        read_*, write_*
* memory_step.py - a whole step's memory interaction, one launch   memory_step_forward / memory_step_backward
* sequence.py    - a whole NTM sequence, one persistent launch      sequence_forward / sequence_backward

Every op is one kernel launch forward and one backward. Inputs arrive validated by ntm_fast.ops.
"""
from .address import address_backward, address_forward
from .memory_step import memory_step_backward, memory_step_forward
from .read_write import read_backward, read_forward, write_backward, write_forward
from .sequence import sequence_backward, sequence_forward, sequence_unsupported

# Device types on which the whole-sequence launchers serve NTM.forward (CPU tensors only reach this backend
# under the Triton interpreter).
FUSED_SEQUENCE_DEVICES = ("cuda", "cpu")

__all__ = ["address_forward", "address_backward", "read_forward", "read_backward", "write_forward",
           "write_backward", "memory_step_forward", "memory_step_backward", "sequence_forward", "sequence_backward",
           "sequence_unsupported", "FUSED_SEQUENCE_DEVICES"]
