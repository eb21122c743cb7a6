"""The cross-encoder teacher's pieces (`teacher.matching: cross`): a joint transformer that reads an
image's region tokens and a caption's word tokens together, and the in-batch hard-negative lists it
trains on.

Unlike SCAN, every layer lets every word see every region and vice versa, so a pair's score can use
relations no single attention pass finds; the price is a transformer forward per pair, which is why
training scores only each query's positive and hardest negatives, and why evaluation on a CPU
re-ranks the top-K of the teacher's global score instead of scoring every pair.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from core.config import CrossConfig


class CrossEncoder(nn.Module):
    """Score of explicit pairs: [CLS] + region tokens + word tokens (a learned type embedding per
    modality) through pre-norm transformer layers; the [CLS] output feeds a linear matching head."""

    def __init__(self, dim: int, cfg: CrossConfig):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.kind = nn.Parameter(torch.randn(2, dim) * 0.02)  # region, word
        layer = nn.TransformerEncoderLayer(dim, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        self.scale = math.sqrt(dim)  # L2-normalised tokens to unit-variance entries

    def forward(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor) -> torch.Tensor:
        """(N,) scores of N pairs: regions (N, R, D), words (N, L, D), masks True = valid token."""
        n = regions.shape[0]
        x = torch.cat([self.cls.expand(n, -1, -1).to(regions.dtype), regions * self.scale + self.kind[0],
                       words * self.scale + self.kind[1]], dim=1)
        valid = torch.cat([region_mask.new_ones(n, 1), region_mask, word_mask], dim=1)
        h = self.layers(x, src_key_padding_mask=~valid)
        return self.head(self.norm(h[:, 0])).squeeze(-1)

    def pair_cost(self, n_regions: int, n_words: int) -> int:
        """Numbers one pair's forward holds at once (activations of a layer), to size blocks of pairs."""
        layer = self.layers.layers[0]
        width = layer.linear1.out_features + 4 * layer.linear1.in_features
        n = 1 + n_regions + n_words
        return n * width + layer.self_attn.num_heads * n * n


def hard_lists(first_stage: torch.Tensor, image_index: torch.Tensor, negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training lists of a square batch (pair b = image b with caption b): for each image its caption
    and its `negatives` highest-scoring captions of other images, and for each caption likewise its
    image and the hardest other images; ids into the batch, the positive first, (B, 1 + k) each with
    k = min(negatives, B - 1). Slots that only a same-image item could fill are -1."""
    same = image_index[:, None] == image_index[None, :]
    k = min(negatives, len(image_index) - 1)
    scores = first_stage.detach().masked_fill(same, float("-inf"))
    own = torch.arange(len(image_index), device=first_stage.device)[:, None]

    def lists(rows: torch.Tensor) -> torch.Tensor:
        top = rows.topk(k, dim=1)
        ids = top.indices.masked_fill(torch.isinf(top.values), -1)
        return torch.cat([own, ids], dim=1)

    return lists(scores), lists(scores.T)
