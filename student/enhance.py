"""Enhancements of the dual encoder that keep image and text encoded independently (so retrieval
stays one matrix product and both encoders still export on their own):

- `CrossModalMemory` (MEMBER, Li et al. 2021): banks of cluster centres of each modality's
  embeddings, kept up to date during training; an embedding attends over the other modality's bank
  and adds what it reads. The banks are buffers, constant at inference, so the exported graphs
  carry them as initializers.
- `SelfGuidedWeights` (USER, Zhang et al. 2023): a global query re-weights a modality's tokens
  before pooling.
- `hierarchical_concat` (Sun, Qin, Liu 2023): the shipped embedding joins a global and a local space.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CrossModalMemory(nn.Module):
    """An image bank (read by captions) and a text bank (read by images), `slots` vectors each.

    `enrich(e, bank) = normalise(e + mix * softmax(e · bankᵀ / temperature) · bank)`. The banks are
    online cluster centres of the training set's embeddings: the first training batch fills them,
    then every step moves each centre towards the mean of the batch embeddings nearest to it
    (exponential moving average, `momentum`), as a VQ codebook is kept. So the banks follow the
    encoder as it trains, and the banks a model is validated and exported with are the ones it was
    trained with. Until the first update (`filled` = 0) embeddings pass through unchanged.
    """

    def __init__(self, slots: int, dim: int, mix: float, temperature: float, momentum: float):
        super().__init__()
        self.mix, self.temperature, self.momentum = mix, temperature, momentum
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
    def _update_bank(self, bank: torch.Tensor, rows: torch.Tensor) -> None:
        rows = F.normalize(rows.to(bank.dtype), dim=-1)
        if not self.filled:
            bank.copy_(rows[torch.arange(len(bank), device=rows.device) % len(rows)])
            return
        assign = (rows @ bank.T).argmax(dim=1)
        means = F.normalize(torch.zeros_like(bank).index_add_(0, assign, rows), dim=-1)
        moved = F.normalize(self.momentum * bank + (1 - self.momentum) * means, dim=-1)
        bank.copy_(torch.where(torch.bincount(assign, minlength=len(bank))[:, None] > 0, moved, bank))

    @torch.no_grad()
    def update(self, images: torch.Tensor, captions: torch.Tensor) -> None:
        """One step of the banks from a batch's pre-memory embeddings (no gradient)."""
        self._update_bank(self.image_bank, images)
        self._update_bank(self.text_bank, captions)
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
