"""Data-parallel training across processes: torchrun / DDP semantics for the stacked loop.

Launched by ``torchrun`` (or ``wager train CONFIG --nproc N``, which calls it), every process
holds the whole model (the M stacked members) and reads the whole data; the training loop
(:func:`wager.training.trainer.train_stacked`) then

- draws the same shuffle in every process (same seed) and splits each batch of
  ``batch_size`` rows into N contiguous shards, one per process (``batch_size`` is the global
  batch: the run takes the same optimiser steps whatever N is);
- weights each process's loss by its shard's share of the batch's rows and sums the
  gradients across processes (one ``all_reduce`` of the flattened gradients per step, the
  batch's loss riding along), so every process takes the step of the whole batch. This is
  what ``DistributedDataParallel`` does for an ``nn.Module``; the stacked, ``vmap``-ped
  members are not one, so the reduction is done here on their leaves;
- keeps the parameters identical in every process (same start, same summed gradients), so
  validation, early stopping and the best epochs agree without further messages;
- lets rank 0 alone draw the progress bar, log, and save checkpoints and the run.

For losses that are a mean over rows (ratings, clicks, CTR rows, full softmax) the result
equals a one-process run up to float rounding of the sums; losses that use the batch itself
(in-batch negatives) see each process's shard as its batch, as under DDP.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL when training on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DataParallel", "init_from_environment", "launched_by_torchrun", "torchrun_rank"]


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world_size`` data-parallel processes.

    Attributes:
        rank: 0 .. world_size - 1 (0 logs and saves).
        world_size: number of processes (>= 2).
    """

    rank: int
    world_size: int

    @classmethod
    def current(cls) -> DataParallel | None:
        """The data-parallel group this process belongs to, or None when it trains alone
        (no process group, or a group of one)."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        size = dist.get_world_size()
        return cls(dist.get_rank(), size) if size > 1 else None

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that logs and saves."""
        return self.rank == 0

    def shard(self, idx: Tensor) -> tuple[Tensor, float]:
        """This process's contiguous share of a batch's (B,) row indices and its weight
        (share of the B rows; 0 for an empty shard of a batch smaller than world_size)."""
        n = int(idx.shape[0])
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return idx[lo:hi], (hi - lo) / n if n else 0.0

    def reduce(self, leaves: list[Tensor], loss: Tensor) -> Tensor:
        """Sum the leaves' gradients (in place; a missing gradient counts as zeros) and
        ``loss`` (a scalar) across the processes, in one ``all_reduce``; returns the summed
        loss."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in leaves]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().reshape(1)])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(leaves, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        return flat[-1]


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (its environment names a rank and a world)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_rank() -> int:
    """This process's rank under torchrun (0 when torchrun did not start it): known before
    the process group is joined, so a run can decide early that rank 0 alone saves."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def init_from_environment(device: torch.device) -> DataParallel | None:
    """Join the process group torchrun describes, once: gloo for CPU training, NCCL for
    CUDA (each process on GPU ``LOCAL_RANK``). None when torchrun did not start this
    process or the world has one process.

    Args:
        device: where this process trains.
    """
    if not launched_by_torchrun():
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DataParallel.current()
