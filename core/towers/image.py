"""Image towers: any timm backbone, or precomputed region features, as tokens + a pooled vector."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from core.config import ImageTowerConfig
from core.data.images import ImagePreprocess
from core.paths import resolve_path
from core.weights import load_state_dict_file


@dataclass
class TokenOutput:
    """What every tower returns: per-token features, a validity mask, and one pooled vector."""

    tokens: torch.Tensor  # (B, T, C)
    mask: torch.Tensor  # (B, T) bool, True = valid
    pooled: torch.Tensor  # (B, C)

    def to(self, device: torch.device) -> "TokenOutput":
        return TokenOutput(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file into a timm model that still has its classifier.

    Keys are matched by name; a file whose keys differ (e.g. lukemelas EfficientNet for timm's
    tf_efficientnet) is accepted only when every tensor matches the model's, in order and shape.
    """
    path = Path(path)
    source = load_state_dict_file(path)
    target = model.state_dict()
    if set(target) <= set(source) or set(source) <= set(target):
        missing = [k for k in target if k not in source]
        classifier = {f"{model.default_cfg.get('classifier', 'head')}.{s}" for s in ("weight", "bias")}
        if set(missing) - classifier:
            raise ValueError(f"{path}: missing {len(missing)} tensors of the model, e.g. {missing[:3]}")
        wrong = [k for k in source if k in target and source[k].shape != target[k].shape]
        if wrong:
            raise ValueError(f"{path}: shape mismatch for {wrong[:3]}")
        model.load_state_dict({k: v for k, v in source.items() if k in target}, strict=False)
        return
    if len(source) != len(target):
        raise ValueError(
            f"{path}: {len(source)} tensors with other names than the model's {len(target)}; "
            "cannot map them onto the model"
        )
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise ValueError(f"{path}: tensor '{sk}' {tuple(sv.shape)} does not fit '{tk}' {tuple(tv.shape)}")
    model.load_state_dict(dict(zip(target, source.values())))


class TimmImageTower(nn.Module):
    """A timm backbone: grid/patch tokens from `forward_features`, pooled vector from its own head."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **cfg.model_kwargs)
        if cfg.weights:
            load_backbone_weights(model, resolve_path(cfg.weights))
        model.reset_classifier(0)
        self.model = model
        self.out_dim = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        img_size = cfg.model_kwargs.get("img_size")
        self.image_size = cfg.image_size or (int(img_size) if isinstance(img_size, int) else None)

    def preprocess(self) -> ImagePreprocess:
        """The model's normalisation at the configured size; no crop margin (objects at edges matter)."""
        data_cfg = timm.data.resolve_data_config({}, model=self.model)
        size = self.image_size or int(data_cfg["input_size"][-1])
        interpolation = data_cfg.get("interpolation", "bicubic")
        return ImagePreprocess(
            size=size,
            resize=size,
            mean=tuple(float(x) for x in data_cfg["mean"]),
            std=tuple(float(x) for x in data_cfg["std"]),
            interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
        )

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor | None = None) -> TokenOutput:
        feats = self.model.forward_features(pixels)
        pooled = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:
            tokens = feats.flatten(1, 2) if self.channels_last_output else feats.flatten(2).transpose(1, 2)
        else:
            tokens = feats[:, self.num_prefix_tokens:]
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return TokenOutput(tokens, valid, pooled)


class RegionFeatureTower(nn.Module):
    """Precomputed region features (SCAN's bottom-up 36x2048): tokens as given, pooled by masked mean."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.out_dim = feature_dim

    def preprocess(self) -> None:
        return None

    def forward(self, regions: torch.Tensor, mask: torch.Tensor | None = None) -> TokenOutput:
        if mask is None:
            mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
        weights = mask.unsqueeze(-1).to(regions.dtype)
        pooled = (regions * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return TokenOutput(regions, mask, pooled)


def build_image_tower(cfg: ImageTowerConfig, feature_dim: int | None = None) -> nn.Module:
    """The configured image tower; `feature_dim` comes from the dataset for feature towers."""
    if cfg.kind == "features":
        if feature_dim is None:
            raise ValueError("image_tower.kind 'features' needs a dataset of precomputed region features")
        return RegionFeatureTower(feature_dim)
    return TimmImageTower(cfg)
