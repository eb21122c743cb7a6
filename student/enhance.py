"""Enhancements of the dual encoder that keep image and text encoded independently (so retrieval
stays one matrix product and both encoders still export on their own):

- `CrossModalMemory` (MEMBER, Li et al. 2021): banks of cluster centres of each modality's
  embeddings; an embedding attends over the other modality's bank and adds what it reads. The banks
  are buffers, constant at inference, so the exported graphs carry them as initializers.
- `SelfGuidedWeights` (USER, Zhang et al. 2023): a global query re-weights a modality's tokens
  before pooling.
- `hierarchical_concat` (Sun, Qin, Liu 2023): the shipped embedding joins a global and a local space.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def spherical_kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """(k, D) unit-norm centres of the unit-normalised `points` (cosine k-means, Lloyd iterations).

    Written here rather than taken from faiss (an optional dependency of this project) so that it
    runs on the training device and gives the same centres on every torchrun rank and on a resume:
    the starting centres are drawn with `generator`, and a centre left without points keeps its place.
    """
    points = F.normalize(points.float(), dim=-1)
    n = len(points)
    if n == 0:
        raise ValueError("k-means needs at least one point")
    start = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    centres = points[start.to(points.device)]
    for _ in range(iterations):
        assign = (points @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), centres)
    return centres


class CrossModalMemory(nn.Module):
    """An image bank (read by captions) and a text bank (read by images), `slots` vectors each.

    `enrich(e, bank) = normalise(e + mix * softmax(e · bankᵀ / temperature) · bank)`. Until the first
    refresh the banks are empty (`filled` = 0) and embeddings pass through unchanged.
    """

    def __init__(self, slots: int, dim: int, mix: float, temperature: float):
        super().__init__()
        self.mix, self.temperature = mix, temperature
        self.register_buffer("image_bank", torch.zeros(slots, dim))
        self.register_buffer("text_bank", torch.zeros(slots, dim))
        self.register_buffer("filled", torch.zeros(()))

    def _enrich(self, emb: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        bank = bank.to(emb.dtype)
        read = torch.softmax(emb @ bank.T / self.temperature, dim=-1) @ bank
        return F.normalize(emb + (self.mix * self.filled.to(emb.dtype)) * read, dim=-1)

    def images(self, emb: torch.Tensor) -> torch.Tensor:
        return self._enrich(emb, self.text_bank)

    def captions(self, emb: torch.Tensor) -> torch.Tensor:
        return self._enrich(emb, self.image_bank)

    @torch.no_grad()
    def refresh(self, images: torch.Tensor, captions: torch.Tensor, iterations: int, generator: torch.Generator) -> None:
        """Re-cluster the banks from embeddings of the training set (pre-enrichment, any number of rows)."""
        slots = len(self.image_bank)
        self.image_bank.copy_(spherical_kmeans(images.to(self.image_bank.device), slots, iterations, generator))
        self.text_bank.copy_(spherical_kmeans(captions.to(self.text_bank.device), slots, iterations, generator))
        self.filled.fill_(1.0)


class SelfGuidedWeights(nn.Module):
    """Re-weights valid tokens by a global query's attention over them (weights average 1 per item).

    The query starts at zero, so training starts from uniform weights: the plain pooling.
    """

    def __init__(self, width: int, attention_dim: int):
        super().__init__()
        self.query = nn.Linear(width, attention_dim)
        self.key = nn.Linear(width, attention_dim, bias=False)
        nn.init.zeros_(self.query.weight)
        nn.init.zeros_(self.query.bias)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid = mask.unsqueeze(-1).to(tokens.dtype)
        count = valid.sum(1).clamp_min(1.0)
        query = self.query((tokens * valid).sum(1) / count)
        logits = (self.key(tokens) @ query.unsqueeze(-1)).squeeze(-1) * self.scale
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1) * count
        return tokens * weights.unsqueeze(-1)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def hierarchical_concat(global_vec: torch.Tensor, local_vec: torch.Tensor, global_weight: float,
                        local_weight: float) -> torch.Tensor:
    """[wg·ĝ, wl·l̂] / sqrt(wg² + wl²): unit norm, and a dot product of two such vectors is the
    weighted mean (weights wg², wl²) of the global and the local cosine."""
    norm = math.sqrt(global_weight ** 2 + local_weight ** 2)
    return torch.cat([F.normalize(global_vec, dim=-1) * (global_weight / norm),
                      F.normalize(local_vec, dim=-1) * (local_weight / norm)], dim=-1)
