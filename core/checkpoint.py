"""Model weights as safetensors (no code runs on load), written atomically."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from core.io import atomic_path
from core.weights import load_plain, load_state_dict_file


def save_tensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write named tensors (and optional string metadata) to a .safetensors file, atomically."""
    state = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def save_weights(module: nn.Module, path: str | Path) -> None:
    """Write `module.state_dict()` to a .safetensors file, atomically."""
    save_tensors(module.state_dict(), path)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a .safetensors state dict into `module`, requiring every key to match."""
    state = load_state_dict_file(path)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ
        raise ValueError(f"{path}: does not fit the model ({exc})") from exc
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_torch_state(obj: dict, path: str | Path) -> None:
    """Optimizer / scheduler state (tensors and plain values only; loaded with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch_state(path: str | Path) -> dict:
    """Read what `save_torch_state` wrote, with weights_only=True: a file that would run code is refused."""
    obj = load_plain(path, "training state")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(obj).__name__}")
    return obj
