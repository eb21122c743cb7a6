"""Process groups for work split across `torchrun` processes (one process: no group, no-op barriers).

Only barriers and rank bookkeeping live here; the gloo backend serves them on any machine.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mine(self, items: list) -> list:
        """This rank's share of `items` (round robin, so shares differ by at most one)."""
        return items[self.rank::self.world]


def ranks_from_env(timeout_hours: float = 24.0) -> Ranks:
    """The rank and world size set by torchrun, joining (once) the gloo process group it describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each process on a multi-GPU machine takes the GPU of its local rank."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
