"""The model layer: the NTM over sequences, its time step, and the fused step and whole-sequence nodes."""
from .ntm import NTM, NTMCell, NTMState

__all__ = ["NTM", "NTMCell", "NTMState"]
