"""Process groups for work split across `torchrun` processes (one process: no group, no-ops).

Barriers, rank bookkeeping, gathers of per-rank rows (with gradient, for losses over the global
batch) and gradient averaging. Scoring joins a gloo group (any machine); training joins NCCL on
CUDA, gloo elsewhere.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


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

    def all_objects(self, obj: object) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mine(self, items: list) -> list:
        """This rank's share of `items` (round robin, so shares differ by at most one)."""
        return items[self.rank::self.world]


def ranks_from_env(timeout_hours: float = 24.0, backend: str = "gloo") -> Ranks:
    """The rank and world size set by torchrun, joining (once) the process group it describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=timeout_hours))
    return Ranks(dist.get_rank(), dist.get_world_size())


def _pad_tokens(tensor: torch.Tensor, width: int) -> torch.Tensor:
    if width == tensor.shape[1]:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], width - tensor.shape[1], *tensor.shape[2:])], dim=1)


def gather_rows(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Every rank's rows concatenated in rank order; gradients flow back to each rank's own rows.

    Token tensors (dim 1 = tokens) are right-padded with zeros (False for masks) to the widest
    rank's token count first, as ranks trim their batches to their own longest caption.
    """
    if ranks.world == 1:
        return tensor
    if tensor.ndim >= 2:
        width = torch.tensor([tensor.shape[1]], device=tensor.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        tensor = _pad_tokens(tensor, int(width))
    if tensor.requires_grad:
        return torch.cat(dist_nn.all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(ranks.world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients(params: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Average the gradients of `params` over the ranks (one all-reduce of a flat buffer), as DDP does."""
    if ranks.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ranks.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each process on a multi-GPU machine takes the GPU of its local rank."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
