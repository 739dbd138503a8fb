"""Data-parallel training under torchrun: the process group and the few collectives the trainer needs.

`torchrun` (or `python -m torch.distributed.run`) starts one process per rank and sets WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `init` joins the group: gloo for the CPU, NCCL for CUDA with one
GPU per local rank. Without those variables nothing here runs and training is the single-process one.

How the work is split (see the README, "Several processes or machines"):
* `--batch-size` is the global batch. Every rank draws the whole global batch from the one data stream
  seeded by `--seed` and trains on its own slice of it (rank r takes sequences r·B/P .. (r+1)·B/P - 1 of
  B sequences over P ranks): each rank's stream is thus derived from the seed and its rank, and the global
  batches, the learning rate and the checkpoint's data stream are those of a single-process run. DDP
  averages the gradients over the ranks, which for a loss that is a mean over equally scored sequences
  (copy, associative recall, ...) is the gradient of the whole batch: one process and P processes give the
  same parameters up to float32 summation order.
* Only rank 0 writes (checkpoints, metrics, evaluations, plots) and shows progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .runfolder import UsageError

ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place in the group: `size` processes, this one `rank` (`local_rank` on its machine)."""
    size: int
    rank: int
    local_rank: int
    backend: str


def launched() -> bool:
    """Whether torchrun started this process (WORLD_SIZE, RANK and LOCAL_RANK are set)."""
    return all(name in os.environ for name in ENVIRONMENT)


def init(device: str) -> tuple[World, str]:
    """Join the process group that torchrun describes; returns (World, this rank's device). `device` 'cuda'
    becomes cuda:LOCAL_RANK (one GPU per local rank, NCCL); 'cpu' uses gloo."""
    size, rank, local_rank = (int(os.environ[name]) for name in ENVIRONMENT)
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"'device' must be 'cpu' on this machine (no CUDA GPU is visible), got {device!r}",
                             field="device")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"'device' cuda needs one GPU per process on a machine: local rank {local_rank} "
                             f"has none ({torch.cuda.device_count()} visible); lower --nproc_per_node",
                             field="device")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = "nccl" if kind == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return World(size, rank, local_rank, backend), device


def close():
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _carrier(values, device) -> torch.Tensor:
    # NCCL reduces CUDA tensors only; float64 keeps the means of float32 values exact enough to agree.
    return torch.tensor(values, dtype=torch.float64, device=device)


def sum_over_ranks(values: list[float], device) -> list[float]:
    """`values` summed over the ranks (the same list on every rank)."""
    if not active():
        return list(values)
    carrier = _carrier(values, device)
    dist.all_reduce(carrier)
    return carrier.tolist()


def from_rank0(obj):
    """Rank 0's `obj` on every rank (any picklable value)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if active():
        dist.barrier()
