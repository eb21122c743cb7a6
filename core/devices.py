"""Device selection: 'auto' means CUDA when present, else CPU."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a config device name into a torch device, failing clearly if CUDA was asked for but is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available on this machine")
    return device
