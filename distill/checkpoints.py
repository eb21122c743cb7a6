"""Per-epoch training checkpoints: everything an exact resume needs, published as one directory.

`epoch_NNN/` holds the model, the objective (learned temperatures, prototypes), the memory (momentum
weights, queues, bank), optimiser and scheduler state, and `state.json`: the run's identity (the
stage key's hash), the history so far, the selection state, every random generator (Python, NumPy,
torch, the data order) and the SHA-256 of each file. The directory is written beside its final name
and renamed into place, so a kill leaves either no `epoch_NNN/` or a complete one; `latest` also
checks the hashes and skips, with a message, a checkpoint that was damaged afterwards.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checkpoint import load_torch_state, load_weights, save_tensors, save_torch_state, save_weights
from core.io import atomic_dir, read_json, sha256_file, write_json
from core.weights import load_state_dict_file
from distill.memory import Memory

log = logging.getLogger("itr_distill")
STATE, MODEL = "state.json", "model.safetensors"


def epoch_dir(root: Path, epoch: int) -> Path:
    """Where the checkpoint of `epoch` lives under a model directory's `checkpoints/`."""
    return root / f"epoch_{epoch:03d}"


@dataclass
class Trainables:
    """What a checkpoint saves and a resume restores, besides the generators."""

    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    memory: Memory | None


def save(path: Path, parts: Trainables, state: dict[str, Any]) -> None:
    """Write checkpoint `path` (a directory) atomically; `state` goes to state.json with the file hashes."""
    with atomic_dir(path) as tmp:
        save_weights(parts.model, tmp / MODEL)
        save_weights(parts.objective, tmp / "objective.safetensors")
        if parts.memory is not None:
            save_tensors(parts.memory.state_dict(), tmp / "memory.safetensors")
        save_torch_state({"optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict()},
                         tmp / "optimizer.pt")
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        write_json(tmp / STATE, {**state, "files": files})


def _problem(path: Path, state: dict[str, Any], identity: str) -> str | None:
    """Why checkpoint `path` (whose state.json holds `state`) cannot be resumed from; None when it can."""
    if state.get("identity") != identity:
        return "made by another configuration, dataset or seed"
    for name, digest in state.get("files", {}).items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            return f"{name} is missing or does not match its recorded SHA-256"
    return None


def latest(root: Path, identity: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete, undamaged checkpoint under `root` made by run `identity`, with its state."""
    for path in sorted(root.glob("epoch_[0-9][0-9][0-9]"), reverse=True):
        try:
            state = read_json(path / STATE)
        except (OSError, ValueError) as exc:
            problem = str(exc)
        else:
            problem = _problem(path, state, identity)
        if problem is None:
            return path, state
        log.warning("not resuming from %s: %s", path, problem)
    return None


def restore(path: Path, parts: Trainables) -> None:
    """Load checkpoint `path` into the trainables (rebuilt the same way as the run that wrote it)."""
    load_weights(parts.model, path / MODEL)
    load_weights(parts.objective, path / "objective.safetensors")
    if parts.memory is not None:
        try:
            parts.memory.load_state_dict(load_state_dict_file(path / "memory.safetensors"))
        except KeyError as exc:
            raise ValueError(f"{path / 'memory.safetensors'}: {exc.args[0]}") from exc
    training = load_torch_state(path / "optimizer.pt")
    parts.optimizer.load_state_dict(training["optimizer"])
    parts.scheduler.load_state_dict(training["scheduler"])


def prune(root: Path, keep: set[int], keep_last: int) -> None:
    """Remove epoch checkpoints other than `keep` and the newest `keep_last`."""
    epochs = sorted(int(p.name.split("_")[1]) for p in root.glob("epoch_[0-9][0-9][0-9]"))
    keep = keep | set(epochs[-keep_last:] if keep_last > 0 else [])
    for epoch in epochs:
        if epoch not in keep:
            shutil.rmtree(epoch_dir(root, epoch))
