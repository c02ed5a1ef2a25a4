"""torch.distributed plumbing for multi-process training (torchrun, gloo or nccl).

Rank 0 owns the warehouse and the teacher. The other ranks sample masks for their shard of
the batch and send plain Python records to rank 0 (``gather``); rank 0 scores the whole
batch and sends every rank its advantages back (``broadcast``). DDP then averages the
gradients, so the weights stay identical on every rank.

Launch with ``torchrun --nproc_per_node=N -m tacorl_offline.cli train ...``. Note that
``accelerate launch --cpu --num_processes 2`` silently runs one process; the world size is
checked and logged so that mistake is visible.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank; the lists are small)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device: str = "cpu") -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    d = Dist(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if d.world_size != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {d.world_size} ranks")
    return d


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "cpu") -> Iterator[Dist]:
    """The process group for one command: set up from torchrun's environment, torn down after."""
    d = init_from_env(device)
    try:
        yield d
    finally:
        shutdown(d)
