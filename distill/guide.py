"""USER's guided enhancement: global vectors of every training image and caption from a frozen
encoder pair, computed once before the student trains and never updated (they are targets). They
are stored per guide and split (`run_dir/guide/`), so every seed and variant trained with the same
guide reads them instead of running the teacher over the split again.

The guide is the teacher (its global vectors when it has a global term, else the mean of its
projected tokens) or any configured timm / sentence-transformers pair (their pooled outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import GuidedLossConfig
from core.data.records import CaptionSplit
from core.io import atomic_dir, keyed_dir, read_npy, sha256_file, write_json
from core.run_layout import ModelDir, RunPaths
from core.schema import stage_key
from core.towers import build_towers
from core.towers.frozen import frozen_for, split_outputs
from core.towers.heads import TwoTowerModel, set_trainable
from core.towers.image import TokenOutput
from distill.models import feature_dim, load_model, text_source
from student.enhance import masked_mean
from teacher.model import ScanTeacher


@dataclass(frozen=True)
class GuideTargets:
    """Unit-norm guide vectors by split position: images (n_img, Di), captions (n_cap, Dt)."""

    images: torch.Tensor
    captions: torch.Tensor


def _teacher_global(teacher: ScanTeacher, side: str):
    """The teacher's global vector of a tower output: its global head, or its mean projected token."""
    encode = teacher.images_from if side == "image" else teacher.captions_from

    def run(out: TokenOutput) -> torch.Tensor:
        encoded = encode(out)
        return encoded.pooled if encoded.pooled is not None else masked_mean(encoded.tokens, encoded.mask)
    return run


@torch.no_grad()
def _encode(model: nn.Module, split: CaptionSplit, paths: RunPaths, batch_size: int, device: torch.device,
            vector) -> GuideTargets:
    model.to(device).eval()
    frozen = frozen_for(model, split, paths.features, batch_size, device)
    preprocess = model.image_tower.preprocess()
    sides = [torch.cat([F.normalize(vector(side)(o).float(), dim=-1)
                        for o in split_outputs(model, split, side, preprocess, batch_size, device, cached, False)])
             for side, cached in (("image", frozen[0]), ("text", frozen[1]))]
    return GuideTargets(*sides)


def guide_identity(cfg: GuidedLossConfig, paths: RunPaths) -> dict[str, Any]:
    """What names the guide beyond the student's config (which holds the towers' settings): the
    teacher's checkpoint when the teacher guides."""
    return {"teacher": sha256_file(ModelDir(paths.teacher).weights)} if cfg.source == "teacher" else {}


def _guide_key(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit) -> dict[str, Any]:
    """What the guide's vectors of `split` are made from."""
    towers = {} if cfg.source == "teacher" else {"towers": stage_key([cfg.image_tower, cfg.text_tower])}
    return {"source": cfg.source, **guide_identity(cfg, paths), **towers, "split": split.fingerprint()}


def _stored(directory: Path, device: torch.device) -> GuideTargets:
    return GuideTargets(*(torch.from_numpy(np.array(read_npy(directory / f"{side}.npy"))).to(device)
                          for side in ("images", "captions")))


def _compute(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit, batch_size: int,
             device: torch.device) -> GuideTargets:
    if cfg.source == "teacher":
        teacher = load_model(paths.teacher, device)
        return _encode(teacher, split, paths, batch_size, device, lambda side: _teacher_global(teacher, side))
    image, text = build_towers(cfg.image_tower, cfg.text_tower, text_source(paths, cfg.text_tower, split),
                               feature_dim(split), fresh_text=False)
    for tower in (image, text):  # a guide is frozen, whatever its tower settings say
        set_trainable(tower, False)
    return _encode(TwoTowerModel(image, text), split, paths, batch_size, device, lambda side: lambda out: out.pooled)


def guide_targets(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit, batch_size: int,
                  device: torch.device) -> GuideTargets:
    """The guide's vectors for every image and caption of `split`: read from `run_dir/guide/` when a
    student before this one stored them for the same guide and split, else computed and stored."""
    directory, key, fresh = keyed_dir(paths.guide, _guide_key(cfg, paths, split))
    if fresh:
        return _stored(directory, device)
    targets = _compute(cfg, paths, split, batch_size, device)
    with atomic_dir(directory) as tmp:
        for side, vectors in (("images", targets.images), ("captions", targets.captions)):
            np.save(tmp / f"{side}.npy", vectors.cpu().numpy())
        write_json(tmp / "manifest.json", key)
    return targets
