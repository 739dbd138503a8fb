"""Fused Triton kernels for ntm_fast (installed as ntm_fast.kernels)."""
