"""USER's guided enhancement: global vectors of every training image and caption from a frozen
encoder pair, computed once before the student trains and never updated (they are targets).

The guide is the teacher (its global vectors when it has a global term, else the mean of its
projected tokens) or any configured timm / sentence-transformers pair (their pooled outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config import GuidedLossConfig
from core.data.records import CaptionSplit
from core.io import sha256_file
from core.run_layout import ModelDir, RunPaths
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


def guide_targets(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit, batch_size: int,
                  device: torch.device) -> GuideTargets:
    """The guide's vectors for every image and caption of `split`."""
    if cfg.source == "teacher":
        teacher = load_model(paths.teacher, device)
        return _encode(teacher, split, paths, batch_size, device, lambda side: _teacher_global(teacher, side))
    image, text = build_towers(cfg.image_tower, cfg.text_tower, text_source(paths, cfg.text_tower, split),
                               feature_dim(split), fresh_text=False)
    for tower in (image, text):  # a guide is frozen, whatever its tower settings say
        set_trainable(tower, False)
    return _encode(TwoTowerModel(image, text), split, paths, batch_size, device, lambda side: lambda out: out.pooled)
