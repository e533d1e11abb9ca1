"""The process group under the lab's data-parallel training (``torchrun --nproc_per_node W``).

Only the plumbing lives here: creating and destroying the default process group, which device a
rank's tensors live on, wrapping a model in ``DistributedDataParallel``, and the two collective
questions the training loop asks (which checkpoint did rank 0 pick; did every rank succeed).
What data parallelism means for the training itself — the sharded global batch, the globally
reduced balance statistics, the loss weighting — is :mod:`moescope.lab.train`'s.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def data_parallel_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """Under ``torchrun`` (WORLD_SIZE > 1) create the default process group if none exists yet —
    NCCL on the LOCAL_RANK-th CUDA device when CUDA is available, gloo otherwise — and destroy it
    on exit; yields (rank, world size). Without torchrun: (0, 1), nothing created."""
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        created = True
    try:
        yield data_parallel_world()
    finally:
        if created:
            dist.destroy_process_group()


def rank_device() -> torch.device:
    """The device a rank's tensors live on: its CUDA device under NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class DataParallel:
    """This process's share of a data-parallel run (world > 1)."""

    rank: int
    world: int
    device: torch.device
    ddp: torch.nn.Module       # the DistributedDataParallel wrapper: forward and backward go through it
    model: torch.nn.Module     # the wrapped model (parameters, routers)
    shard: slice               # this rank's rows of the global batch: [rank·B/W, (rank+1)·B/W)


def wrap_ddp(model: torch.nn.Module, *, rank: int, world: int, device: torch.device, batch_size: int) -> DataParallel:
    """``model`` (already on ``device``) in ``DistributedDataParallel``, with rank ``rank``'s shard of a
    global batch of ``batch_size`` rows (which ``world`` must divide).

    Buffers are synchronised at construction only, not before every forward: the lab's only
    buffer that changes, DeepSeek-V3's selection bias, is updated from all-reduced loads and so
    stays equal on every rank by itself.
    """
    from torch.nn.parallel import DistributedDataParallel

    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} does not split evenly over {world} data-parallel ranks")
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
    per_rank = batch_size // world
    return DataParallel(rank=rank, world=world, device=device, ddp=ddp, model=model,
                        shard=slice(rank * per_rank, (rank + 1) * per_rank))


def from_lead(value: T, device: torch.device) -> T:
    """Rank 0's ``value`` on every rank (a picklable object; every rank must call this)."""
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def all_ranks_ok(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` holds on every rank (so that a failure raises on all of them, none hangs)."""
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
