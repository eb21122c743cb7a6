"""Enhancements of the dual encoder that keep image and text encoded independently (so retrieval
stays one matrix product and both encoders still export on their own):

- `CrossModalMemory` (MEMBER, Li et al. 2021): banks of cluster centres of each modality's
  embeddings, kept up to date during training; an embedding attends over the other modality's bank
  and adds what it reads. The banks are buffers, constant at inference, so the exported graphs
  carry them as initializers.
- `TokenMemory` (MEMBER at the token level, `memory_bank.level: token`): the same, with banks of each
  modality's token features; every image token and word reads the other modality's bank and is
  fused with what it reads before pooling.
- `SelfGuidedWeights` (USER, Zhang et al. 2023): a global query re-weights a modality's tokens
  before pooling.
- `hierarchical_concat` (Sun, Qin, Liu 2023): the shipped embedding joins a global and a local space.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _ClusterBanks(nn.Module):
    """An image bank and a text bank of `slots` online cluster centres each, and the step that keeps
    them: the first update fills a bank with a batch's (L2-normalised) rows, repeated when fewer than
    the slots; every later update moves each centre towards the mean of the rows nearest to it by an
    exponential moving average (`momentum`), as a VQ codebook is kept, and leaves a centre nearest to
    no row where it is. The banks are buffers: constants at inference, initializers of the exported
    graphs. Until the first update `filled` is 0 and reading the banks changes nothing."""

    def __init__(self, slots: int, image_dim: int, text_dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("image_bank", torch.zeros(slots, image_dim))
        self.register_buffer("text_bank", torch.zeros(slots, text_dim))
        self.register_buffer("filled", torch.zeros(()))

    @staticmethod
    def _attend(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax(queries · keysᵀ / temperature) · keys, over the last dimension."""
        return torch.softmax(queries @ keys.T / temperature, dim=-1) @ keys

    @torch.no_grad()
    def _update_bank(self, bank: torch.Tensor, rows: torch.Tensor) -> None:
        if not len(rows):
            return
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
        """One step of both banks from rows of image and of caption features (no gradient)."""
        self._update_bank(self.image_bank, images)
        self._update_bank(self.text_bank, captions)
        self.filled.fill_(1.0)


class CrossModalMemory(_ClusterBanks):
    """MEMBER on global embeddings: an image bank (read by captions) and a text bank (read by images),
    `slots` centres each of the training set's pre-memory embeddings.

    `enrich(e, bank) = normalise(e + mix * softmax(e · bankᵀ / temperature) · bank)`. The banks follow
    the encoder as it trains (`update` at every step), so the banks a model is validated and exported
    with are the ones it was trained with.
    """

    def __init__(self, slots: int, dim: int, mix: float, temperature: float, momentum: float):
        super().__init__(slots, dim, dim, momentum)
        self.mix, self.temperature = mix, temperature

    def _enrich(self, emb: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        read = self._attend(emb, bank.to(emb.dtype), self.temperature)
        return F.normalize(emb + (self.mix * self.filled.to(emb.dtype)) * read, dim=-1)

    def images(self, emb: torch.Tensor) -> torch.Tensor:
        return self._enrich(emb, self.text_bank)

    def captions(self, emb: torch.Tensor) -> torch.Tensor:
        return self._enrich(emb, self.image_bank)


def _association(bank_width: int, reader_width: int) -> nn.Linear:
    """A learned map of a bank into the reader's token space; the identity (truncated when the widths
    differ) at the start."""
    layer = nn.Linear(bank_width, reader_width, bias=False)
    nn.init.eye_(layer.weight)
    return layer


class TokenMemory(_ClusterBanks):
    """MEMBER at the token level, as the paper memorises fine-grained features: an image bank of
    `slots` centres of the training set's image-token features (read by words) and a text bank of
    centres of its word features (read by image tokens), in the towers' token widths.

    Each valid token t reads the other modality's bank through a learned association A (the tokens of
    two towers live in unrelated spaces, often of different widths): with keys k = normalise(A · bank),
    `read = softmax(normalise(t) · kᵀ / temperature) · k` and the token becomes
    `t + mix * |t| * read` (the read is unit-scale; |t| gives `mix` the meaning it has for unit
    embeddings). Padding tokens are left as they are. The fused tokens are then pooled as usual, so
    alignment with the other modality's local features happens before pooling, and each encoder
    still runs alone.
    """

    def __init__(self, slots: int, image_width: int, text_width: int, mix: float, temperature: float,
                 momentum: float):
        super().__init__(slots, image_width, text_width, momentum)
        self.mix, self.temperature = mix, temperature
        self.text_to_image = _association(text_width, image_width)
        self.image_to_text = _association(image_width, text_width)

    def _fuse(self, tokens: torch.Tensor, mask: torch.Tensor, bank: torch.Tensor,
              association: nn.Linear) -> torch.Tensor:
        keys = F.normalize(association(bank.to(tokens.dtype)), dim=-1)
        read = self._attend(F.normalize(tokens, dim=-1), keys, self.temperature)
        scale = (self.mix * self.filled.to(tokens.dtype)) * tokens.norm(dim=-1, keepdim=True)
        return tokens + (scale * mask.unsqueeze(-1).to(tokens.dtype)) * read

    def images(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, T, C_image) fused with what they read from the text bank."""
        return self._fuse(tokens, mask, self.text_bank, self.text_to_image)

    def captions(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Word tokens (B, T, C_text) fused with what they read from the image bank."""
        return self._fuse(tokens, mask, self.image_bank, self.image_to_text)


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
