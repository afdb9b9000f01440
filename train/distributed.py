"""Training on several processes with torch.distributed, as `torchrun` starts them.

Every rank builds the same windows and the same batch order (same seeds); each takes its share of
every batch, and DistributedDataParallel averages the gradients, so a step sees the whole batch as
one process would.  Only rank 0 writes checkpoints and the artifact.  gloo on the CPU, NCCL on GPUs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment (nothing to do without one);
    returns the device this rank trains on."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def shard(indices, batch_rank: int | None = None, world: int | None = None):
    """This rank's share of one batch's indices."""
    world = world or size()
    return indices if world == 1 else indices[(rank() if batch_rank is None else batch_rank) :: world]


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    if size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


def all_mean(value: torch.Tensor) -> torch.Tensor:
    if size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= size()
    return value


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
