"""Image towers: any timm backbone, or precomputed region features, as tokens + a pooled vector."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from core.config import BackboneConfig, ImageTowerConfig
from core.data.images import ImagePreprocess
from core.paths import resolve_path
from core.towers.heads import keep_trunk_in_eval
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
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        if sv.shape != tv.shape:
            raise ValueError(f"{path}: tensor '{sk}' {tuple(sv.shape)} does not fit '{tk}' {tuple(tv.shape)}")
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))


def _backbone(cfg: ImageTowerConfig | BackboneConfig) -> nn.Module:
    """A timm backbone with its weights and without its classifier, its convolution weights in channels-last
    layout: the crops arrive as (B, H, W, 3), and on the 2-core development CPU the duo student's Lite2 + Lite0
    trunk then takes 116 instead of 184 ms per image (batch 32, bench/results/cpu-epyc-2core/channels-last/;
    its frozen caches of Flickr8k's 3,500 images are the longest step before training). The values are the
    same; only the strides differ."""
    model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **cfg.model_kwargs)
    if cfg.weights:
        load_backbone_weights(model, resolve_path(cfg.weights))
    model.reset_classifier(0)
    return model.to(memory_format=torch.channels_last)


def _renormalisation(pre: ImagePreprocess, model: nn.Module) -> torch.Tensor:
    """(2, 1, 3, 1, 1): scale and shift taking pixels normalised by `pre` to `model`'s own normalisation."""
    data_cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = (torch.tensor(data_cfg[k], dtype=torch.float32) for k in ("mean", "std"))
    pre_mean, pre_std = torch.tensor(pre.mean), torch.tensor(pre.std)
    return torch.stack([pre_std / std, (pre_mean - mean) / std]).view(2, 1, 3, 1, 1)


def pixel_table(preprocess: ImagePreprocess) -> torch.Tensor:
    """(3 * 256,) float32: channel c's normalised value of uint8 value v at c * 256 + v, the values
    `ImagePreprocess.normalise` looks up (so a tower's normalisation equals the NumPy one exactly)."""
    return torch.from_numpy(preprocess.normalise(np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, 2))
                            .reshape(3 * 256))


def normalise_crops(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W): uint8 crops (B, H, W, 3) as `ImagePreprocess.crop` gives them looked up in
    `table` (`pixel_table`) on their device; anything else (already normalised) as it is."""
    if pixels.dtype != torch.uint8:
        return pixels
    index = pixels.permute(0, 3, 1, 2).int() + torch.arange(0, 3 * 256, 256, device=pixels.device,
                                                             dtype=torch.int32).view(1, 3, 1, 1)
    return table.index_select(0, index.flatten()).view(index.shape)


def backbone_stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
    """A timm backbone's `forward_features` as (stem, stages, tail) modules run in order, so that it can
    be cut between stages. Known layouts: EfficientNet / MobileNet (conv_stem, bn1, blocks, conv_head,
    bn2) and ResNet (conv1, bn1, act1, maxpool, layer1..4)."""
    if all(hasattr(model, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return [model.conv_stem, model.bn1], list(model.blocks), [model.conv_head, model.bn2]
    if all(hasattr(model, n) for n in ("conv1", "bn1", "act1", "maxpool", "layer4")):
        layers = [getattr(model, f"layer{i}") for i in range(1, 5)]
        return [model.conv1, model.bn1, model.act1, model.maxpool], layers, []
    raise ValueError(f"image_tower.train_top: cannot cut timm model {type(model).__name__} into stages "
                     "(supported: EfficientNet/MobileNet-style and ResNet-style backbones)")


class TimmImageTower(nn.Module):
    """A timm backbone: grid/patch tokens from `forward_features`, pooled vector from its own head.

    With `train_top` N > 0 the backbone is cut before its last N stages: `trunk` yields the feature
    map there (as tokens) and `top` runs the rest, so a frozen trunk can be cached while the top
    trains (`core.towers.frozen`). `forward` is `top(trunk(x))`, what export and evaluation run.
    With `fine_tokens` the top also returns the trunk's tokens, through the trained `fine_proj`.
    The backbones of `also` run on the same pixels; their grids, resampled to this one's, add channels
    to every token and to the pooled vector (`out_dim` is the sum).
    """

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        self.model = model = _backbone(cfg)
        self.also = nn.ModuleList(_backbone(b) for b in cfg.also)
        self.out_dim = int(model.num_features) + sum(int(m.num_features) for m in self.also)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        img_size = cfg.model_kwargs.get("img_size")
        self.image_size = cfg.image_size or (int(img_size) if isinstance(img_size, int) else None)
        # uint8 crops are normalised where the tower runs: the loader ships a quarter of the bytes and the
        # device does the arithmetic (not saved: it follows from the preprocessing)
        self.register_buffer("pixel_table", pixel_table(self.preprocess()), persistent=False)
        if self.also and (self.channels_last_output or self.num_prefix_tokens):
            raise ValueError(f"image_tower.also: {cfg.name} gives no NCHW feature map to append further grids to")
        # each further backbone's normalisation from this one's: x_own = x * scale + shift, per channel
        self.register_buffer("also_affine", torch.stack([_renormalisation(self.preprocess(), m) for m in self.also])
                             if self.also else torch.empty(0, 2, 1, 3, 1, 1), persistent=False)
        self.top_stages = cfg.train_top
        if self.top_stages:
            stages = backbone_stages(model)[1]
            if self.top_stages > len(stages):
                raise ValueError(f"image_tower.train_top: {cfg.name} has {len(stages)} stages, got {self.top_stages}")
        # Not one of `top_modules`: their count is part of the trunk cache key, which a fine tower
        # shares with the same tower without fine tokens (same trunk); `build_towers` trains it.
        self.fine_proj: nn.Linear | None = None
        if cfg.fine_tokens:
            if not self.top_stages:
                raise ValueError("image_tower.fine_tokens: needs train_top >= 1")
            self.fine_proj = nn.Linear(self._trunk_channels(), self.out_dim)

    @torch.no_grad()
    def _trunk_channels(self) -> int:
        """Channels at the cut, from one small forward (layouts differ in where they record widths)."""
        was_training = self.model.training
        self.model.eval()  # batch norm in training mode refuses a single 1x1 input
        channels = self.trunk(torch.zeros(1, 3, 64, 64)).tokens.shape[-1]
        self.model.train(was_training)
        return int(channels)

    def trunk_modules(self) -> list[nn.Module]:
        """What runs before the cut (the whole tower when nothing is cut)."""
        if not self.top_stages:
            return [self]
        stem, stages, _ = backbone_stages(self.model)
        return stem + stages[:-self.top_stages]

    def top_modules(self) -> list[nn.Module]:
        """The backbone stages (and tail) after the cut, trainable under a frozen trunk."""
        if not self.top_stages:
            return []
        _, stages, tail = backbone_stages(self.model)
        return stages[-self.top_stages:] + tail

    def train(self, mode: bool = True) -> "TimmImageTower":
        super().train(mode)
        keep_trunk_in_eval(self)
        return self

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
        """Tokens of normalised pixels (B, 3, H, W), or of the uint8 crops (B, H, W, 3) training loads."""
        if self.top_stages:
            return self.top(self.trunk(pixels, mask))
        x = normalise_crops(pixels, self.pixel_table)
        feats = self.model.forward_features(x)
        if not len(self.also):
            return self._output(feats)
        pooled = [self.model.forward_head(feats, pre_logits=True)]
        for net, (scale, shift) in zip(self.also, self.also_affine, strict=True):
            theirs = net.forward_features(x * scale + shift)
            if theirs.ndim != 4:
                raise ValueError("image_tower.also: a further backbone gave no NCHW feature map")
            pooled.append(net.forward_head(theirs, pre_logits=True))
            if theirs.shape[-2:] != feats.shape[-2:]:
                theirs = F.adaptive_avg_pool2d(theirs, feats.shape[-2:])
            feats = torch.cat([feats, theirs], 1)
        tokens = feats.flatten(2).transpose(1, 2)
        return TokenOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device),
                           torch.cat(pooled, 1))

    def trunk(self, pixels: torch.Tensor, mask: torch.Tensor | None = None) -> TokenOutput:
        """The feature map at the cut as (B, H*W, C) tokens (pooled: their mean); everything when uncut."""
        if not self.top_stages:
            return self(pixels, mask)
        x = normalise_crops(pixels, self.pixel_table)
        for module in self.trunk_modules():
            x = module(x)
        tokens = x.flatten(2).transpose(1, 2)
        return TokenOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device), tokens.mean(1))

    def top(self, cut: TokenOutput) -> TokenOutput:
        """The tower's output from the trunk's (identity when uncut)."""
        if not self.top_stages:
            return cut
        b, t, c = cut.tokens.shape
        side = math.isqrt(t)
        if side * side != t:
            raise ValueError(f"image tower: {t} trunk tokens do not form a square grid")
        x = cut.tokens.transpose(1, 2).reshape(b, c, side, side)
        for module in self.top_modules():
            x = module(x)
        out = self._output(x)
        if self.fine_proj is None:
            return out
        tokens = torch.cat([out.tokens, self.fine_proj(cut.tokens)], 1)
        return TokenOutput(tokens, torch.cat([out.mask, cut.mask], 1), out.pooled)

    def _output(self, feats: torch.Tensor) -> TokenOutput:
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

    def trunk_modules(self) -> list[nn.Module]:
        return [self]

    def top_modules(self) -> list[nn.Module]:
        return []

    def trunk(self, regions: torch.Tensor, mask: torch.Tensor | None = None) -> TokenOutput:
        return self(regions, mask)

    def top(self, cut: TokenOutput) -> TokenOutput:
        return cut

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
