"""Process groups for work split across `torchrun` processes (one process: no group, no-ops).

Barriers, rank bookkeeping, gathers of per-rank rows (with gradient, for losses over the global
batch) and gradient averaging. Scoring joins a gloo group (any machine); training joins NCCL on
CUDA, gloo elsewhere.

Rank 0 writes files that the other ranks read after a barrier, so every rank must see the run
directory: a job checks that once when it starts (`check_shared`), and the reads after a barrier
go through `shared_file`, so node-local disks fail with one clear message on every rank.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from core.run_layout import RunPaths

T = TypeVar("T")
RUN_DIR_SHARED = ("the run directory must be on a file system every node shares (e.g. NFS/Lustre); "
                  "see README 'Several machines'")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the rank among the processes of this machine (torchrun's LOCAL_RANK)

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

    def on_main(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on rank 0 alone while the other ranks wait; every rank returns rank 0's result
        (picklable). For the steps of a torchrun command that must not run once per rank: writing a
        file every rank reads, evaluating, writing a table."""
        return self.all_objects(fn(*args) if self.is_main else None)[0]

    def mine(self, items: list) -> list:
        """This rank's share of `items` (round robin, so shares differ by at most one)."""
        return items[self.rank::self.world]


def ranks_from_env(timeout_hours: float = 24.0, backend: str = "gloo", run_dir: str | Path | None = None) -> Ranks:
    """The rank and world size set by torchrun, joining (once) the process group it describes; with
    `run_dir`, checking (once per process) that every rank sees it (`check_shared`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend == "nccl":  # object gathers run on the current device: each rank its own GPU
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=timeout_hours))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), local_rank)
    if run_dir is not None and str(Path(run_dir).resolve()) not in _CHECKED:
        check_shared(run_dir, ranks)
        _CHECKED.add(str(Path(run_dir).resolve()))
    return ranks


def leave_process_group() -> None:
    """Leave the torchrun process group, if this process joined one: a group still open at interpreter
    exit can abort the process ("terminate called without an active exception") after its work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class NotShared(RuntimeError):
    """A file one rank wrote is missing on another rank (the run directory is on node-local disks)."""


_CHECKED: set[str] = set()  # run directories this process has checked


def all_see(missing: Path | None, ranks: Ranks, writer: str = "rank 0", need: str = RUN_DIR_SHARED) -> None:
    """Every rank says which file `writer` wrote it could not see (None: it saw it); when any rank
    missed one, every rank raises the same NotShared naming the first such rank, its host and file."""
    views = ranks.all_objects(None if missing is None else (str(missing), socket.gethostname()))
    blind = [(rank, view) for rank, view in enumerate(views) if view is not None]
    if not blind:
        return
    rank, (path, host) = blind[0]
    others = f" (nor can rank(s) {', '.join(str(r) for r, _ in blind[1:])})" if len(blind) > 1 else ""
    raise NotShared(f"{path}: rank {rank} on host {host} cannot see the file {writer} wrote{others}: {need}")


def shared_file(path: str | Path, ranks: Ranks, writer: str = "rank 0", need: str = RUN_DIR_SHARED) -> Path:
    """`path`, which `writer` wrote before a barrier, once every rank has seen it (all_see; a collective)."""
    path = Path(path)
    all_see(None if ranks.world == 1 or path.exists() else path, ranks, writer, need)
    return path


def check_shared(run_dir: str | Path, ranks: Ranks) -> None:
    """Rank 0 writes a random token under the run directory and every rank reads it back: on
    node-local disks every rank fails here, at the start, with one clear message (all_see)."""
    if ranks.world == 1:
        return
    token = ranks.all_objects(secrets.token_hex(8))[0]
    marker = RunPaths(run_dir).shared_check(token)
    if ranks.is_main:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token, encoding="utf-8")
    ranks.barrier()
    try:
        seen = marker.read_text(encoding="utf-8") == token
    except OSError:
        seen = False
    try:
        all_see(None if seen else marker, ranks)  # a collective: every rank has read the marker after it
    finally:
        if ranks.is_main:
            marker.unlink(missing_ok=True)
            try:
                marker.parent.rmdir()
            except OSError:  # another job's marker is there
                pass


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
