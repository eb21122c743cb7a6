"""Projection heads, and the two-tower base module shared by teacher and student."""
from __future__ import annotations

from typing import Literal

from torch import nn


def make_projection(in_dim: int, out_dim: int, kind: Literal["linear", "mlp"] = "linear") -> nn.Module:
    """A linear map, or a two-layer MLP (GELU) for a richer projection."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, 2 * out_dim), nn.GELU(), nn.Linear(2 * out_dim, out_dim))
    raise ValueError(f"unknown projection kind {kind!r} (expected 'linear' or 'mlp')")


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


class TwoTowerModel(nn.Module):
    """An image tower and a text tower; a frozen tower stays in eval mode (no dropout, fixed norms)."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower

    def train(self, mode: bool = True) -> "TwoTowerModel":
        super().train(mode)
        for tower in (self.image_tower, self.text_tower):
            if not any(p.requires_grad for p in tower.parameters()):
                tower.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict:
        return self.text_tower.tokenize(texts)

    def tower_outputs(self, batch) -> tuple:
        """Both towers' outputs for a batch, taken from the batch when a frozen tower's cache supplied them."""
        image = batch.image_features if batch.image_features is not None else self.image_tower(batch.images, batch.image_mask)
        text = batch.text_features if batch.text_features is not None else self.text_tower(batch.input_ids, batch.attention_mask)
        return image, text
