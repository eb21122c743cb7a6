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


def keep_trunk_in_eval(tower: nn.Module) -> None:
    """A frozen trunk under a training top (`train_top`) stays in eval mode: fixed norms, no dropout,
    as the outputs cached from it were computed."""
    if tower.top_modules() and not any(p.requires_grad for m in tower.trunk_modules() for p in m.parameters()):
        for module in tower.trunk_modules():
            module.eval()


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
        """Both towers' outputs for a batch; where a frozen trunk's cache supplied its outputs, only the
        towers' trainable tops run on them."""
        image = (self.image_tower.top(batch.image_features) if batch.image_features is not None
                 else self.image_tower(batch.images, batch.image_mask))
        text = (self.text_tower.top(batch.text_features) if batch.text_features is not None
                else self.text_tower(batch.input_ids, batch.attention_mask))
        return image, text
