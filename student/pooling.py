"""Generalized pooling operator (GPO, Chen et al., "Learning the Best Pooling Strategy for Visual
Semantic Embedding", CVPR 2021): a learned weighting of each channel's sorted token values.

Every channel's values over the valid tokens are sorted in descending order and summed with weights
that depend on the sorted position k and on how many tokens are valid, n. So one operator covers
max pooling (all weight on k = 0), average pooling (equal weights) and everything between, and it
learns which suits the features. VSE∞ generates the weights with a GRU over position encodings; here
a small MLP reads the encodings of k and n, conditioned on the same two quantities, which exports to
ONNX as plain matrix products.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _encode(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encodings (…, dim) of integer positions."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) * (-math.log(1e4) / dim))
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sorted_ascending(tokens: torch.Tensor) -> torch.Tensor:
    """Each channel's values over the tokens in ascending order: (B, T, C) -> (B, T, C).

    On a CPU this sort is most of a GPO student's step over frozen features: 128 x 81 x 2,560 values took
    about 1 s with torch.sort on the 2-core development machine, and the momentum copy sorts them again.
    Where no gradient flows through the values (a frozen tower's cached tokens, the momentum copy,
    evaluation), NumPy's vectorised sort gives the same values in about a quarter of the time; elsewhere
    (a trained top, a GPU, the ONNX export's trace) torch.sort."""
    if (tokens.requires_grad or tokens.device.type != "cpu" or tokens.dtype != torch.float32
            or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return tokens.sort(dim=1).values
    return torch.from_numpy(np.sort(tokens.detach().transpose(1, 2).contiguous().numpy(), axis=-1)).transpose(1, 2)


class GPO(nn.Module):
    """(B, T, C) tokens with a (B, T) validity mask -> (B, C).

    Starts as average pooling (zero-initialised last layer: equal weights); `temperature` 0.1 lets the
    weights become peaked, as in VSE∞.
    """

    def __init__(self, encoding_dim: int = 32, hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.encoding_dim, self.temperature = encoding_dim, temperature
        self.weights = nn.Sequential(nn.Linear(2 * encoding_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.weights[-1].weight)
        nn.init.zeros_(self.weights[-1].bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = tokens.shape
        count = mask.sum(1, keepdim=True)  # (B, 1)
        # values sorted ascending: position p holds the value of descending rank t - 1 - p
        rank = (t - 1 - torch.arange(t, device=tokens.device)).expand(b, t)
        code = torch.cat([_encode(rank, self.encoding_dim), _encode(count.expand(b, t), self.encoding_dim)], dim=-1)
        valid_rank = rank < count  # masked tokens sort below every valid value, so the valid ranks come first
        logits = self.weights(code.to(tokens.dtype)).squeeze(-1) / self.temperature
        weights = torch.softmax(logits.masked_fill(~valid_rank, float("-inf")), dim=1)
        low = torch.finfo(tokens.dtype).min
        ordered = sorted_ascending(tokens.masked_fill(~mask.unsqueeze(-1), low))
        ordered = ordered.masked_fill(~valid_rank.unsqueeze(-1), 0.0)
        return (ordered * weights.unsqueeze(-1)).sum(1)
