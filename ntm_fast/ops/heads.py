"""The heads' parameters: the tuples the ops take, and the layout of the controller's head-parameter vector.

One linear layer of the model emits every head parameter at once, grouped by kind over all H = R + W heads
(read heads first): ``[key H·M | β H | g H | s H·K | γ H | erase W·M | add W·M]`` with K = 2S+1.
``HeadLayout`` declares that split and the activations (Section 3.3) once; the model, the fused step and
the C++ step (which receives ``HeadLayout.sizes``) all use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.nn import functional as F


class ReadHeads(NamedTuple):
    """Activated parameters of R read heads: key [B,R,M]; beta, gate, gamma [B,R]; shift [B,R,2S+1]."""

    key: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor


class WriteHeads(NamedTuple):
    """Activated parameters of W write heads: as ReadHeads, plus erase and add [B,W,M]."""

    key: torch.Tensor
    beta: torch.Tensor
    gate: torch.Tensor
    shift: torch.Tensor
    gamma: torch.Tensor
    erase: torch.Tensor
    add: torch.Tensor


@dataclass(frozen=True)
class HeadLayout:
    """R read and W write heads over slots of width M with shifts -S..S."""

    read_heads: int
    write_heads: int
    memory_width: int
    shift_range: int

    @property
    def shifts(self) -> int:
        """K = 2S+1 shift offsets."""
        return 2 * self.shift_range + 1

    @property
    def sizes(self) -> tuple:
        """Split sizes of the head-parameter vector: (key H·M, β H, g H, s H·K, γ H, erase W·M, add W·M)."""
        R, W, M, K = self.read_heads, self.write_heads, self.memory_width, self.shifts
        H = R + W
        return (H * M, H, H, H * K, H, W * M, W * M)

    @property
    def width(self) -> int:
        return sum(self.sizes)

    def zero_shift_columns(self) -> list:
        """Columns of the head-parameter vector holding each head's logit of shift 0 (no move)."""
        start, K = sum(self.sizes[:3]), self.shifts
        return [start + h * K + self.shift_range for h in range(self.read_heads + self.write_heads)]

    def activate(self, p: torch.Tensor):
        """Raw head parameters p [B, width] -> activated (ReadHeads, WriteHeads) (Section 3.3): key and add
        linear, β = softplus, g = sigmoid, s = softmax over the K shifts, γ = 1 + softplus, erase = sigmoid."""
        B, M, R, W = p.shape[0], self.memory_width, self.read_heads, self.write_heads
        key, beta, gate, shift, gamma, erase, add = p.split(self.sizes, dim=-1)
        key = key.view(B, R + W, M)
        beta, gate, gamma = F.softplus(beta), torch.sigmoid(gate), 1 + F.softplus(gamma)
        shift = torch.softmax(shift.view(B, R + W, -1), dim=-1)
        erase, add = torch.sigmoid(erase).view(B, W, M), add.view(B, W, M)
        # One split per kind (its backward is one cat) rather than two slices (two zero-filled slice
        # backwards and an add): fewer autograd nodes per step.
        (rk, wk), (rb, wb), (rg, wg), (rs, ws), (rgm, wgm) = (
            t.split((R, W), dim=1) for t in (key, beta, gate, shift, gamma))
        return ReadHeads(rk, rb, rg, rs, rgm), WriteHeads(wk, wb, wg, ws, wgm, erase, add)
