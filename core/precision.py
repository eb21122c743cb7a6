"""The one mixed-precision rule: bf16 autocast on CUDA when asked for, float32 everywhere else.

`bf16` (`train.bf16`, `scores.bf16`: on by default) is for GPUs, where it saves memory and time.
A CPU run stays float32 whatever it says: bf16 there would change the results without a dependable
speed-up, and CPU runs and tests are meant to give float32's numbers. `precision` is the name caches
and manifests record, so scores made under one arithmetic are not read as made under the other.
"""
from __future__ import annotations

import contextlib

import torch


def precision(device: torch.device, bf16: bool) -> str:
    """The arithmetic work on `device` runs in: "bf16-autocast" or "float32"."""
    return "bf16-autocast" if bf16 and device.type == "cuda" else "float32"


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """A context that applies `precision(device, bf16)`: bf16 autocast on CUDA, else nothing."""
    if precision(device, bf16) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
