"""Process-group set-up for `torchrun`: NCCL on GPUs, gloo on CPU; a no-op for a single process."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vlm.errors import ConfigError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEFAULT_TIMEOUT = dt.timedelta(minutes=60)


def init(device: str | None = None, timeout: dt.timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Join the process group `torchrun` describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), if any.

    The device is CUDA (one GPU per local rank) when available, else CPU; `device` forces one. `timeout` bounds
    every collective: the other ranks wait that long while rank 0 alone reads and verifies the data or plans an
    index add (NCCL's default, 10 minutes, stopped such jobs on large datasets).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None, timeout=timeout)
        LOG.info("joined process group: rank %d/%d, backend %s", rank, world_size, backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank (a one-element list for a single process)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
