"""Image and text towers (timm, sentence-transformers, precomputed features) and projection heads."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from core.config import ImageTowerConfig, TextTowerConfig
from core.towers.heads import set_trainable
from core.towers.image import build_image_tower
from core.towers.text import TextTower


def build_towers(image_cfg: ImageTowerConfig, text_cfg: TextTowerConfig, text_model: str | Path,
                 feature_dim: int | None, fresh_text: bool) -> tuple[nn.Module, TextTower]:
    """Both towers of a model, frozen as configured (a frozen tower's `train_top` part trains).

    `text_model` is the resolved sentence-transformers source (the scratch directory for
    'scratch'); `fresh_text` re-draws the text encoder's weights instead of loading them.
    """
    image = build_image_tower(image_cfg, feature_dim)
    text = TextTower(text_model, text_cfg.max_length, fresh_init=fresh_text, train_top=text_cfg.train_top)
    for tower, cfg in ((image, image_cfg), (text, text_cfg)):
        set_trainable(tower, not cfg.freeze)
        for module in tower.top_modules():
            set_trainable(module, True)
    if getattr(image, "fine_proj", None) is not None:  # part of the top, though not of `top_modules`
        set_trainable(image.fine_proj, True)
    return image, text
