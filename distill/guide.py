"""USER's guided enhancement: global vectors of every training image and caption from a frozen
encoder pair, computed once before the student trains and never updated (they are targets). They
are stored per guide and split (`run_dir/guide/`), so every seed and variant trained with the same
guide reads them instead of computing them again.

The guide is the teacher (its global vectors when it has a global term, else the mean of its
projected tokens), read from its token store of the split (`teacher.tokens`), which KD's caches
are made from anyway: a second pass of the teacher over Flickr8k's train split took about 80 s of
`make flickr8k` on the 2-core development machine. Or any configured timm / sentence-transformers pair
(their pooled outputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.config import GuidedLossConfig
from core.data.records import CaptionSplit
from core.io import atomic_dir, keyed_dir, read_npy, sha256_file, write_json
from core.run_layout import ModelDir, RunPaths
from core.schema import stage_key
from core.towers import build_towers
from core.towers.frozen import frozen_for, split_outputs
from core.towers.heads import TwoTowerModel, set_trainable
from distill.models import feature_dim, text_source
from student.enhance import masked_mean
from teacher.tokens import StoredSide, TokenStore


@dataclass(frozen=True)
class GuideTargets:
    """Unit-norm guide vectors by split position: images (n_img, Di), captions (n_cap, Dt)."""

    images: torch.Tensor
    captions: torch.Tensor


def _store_side(side: StoredSide, device: torch.device, block_rows: int = 4096) -> torch.Tensor:
    """Unit-norm global vectors of one side of the teacher's token store: its stored global vectors, or
    the mean of its stored tokens (padding is stored as zeros), renormalised after float16 storage."""
    vectors = []
    for start in range(0, len(side), block_rows):
        rows = np.arange(start, min(len(side), start + block_rows))
        if side.pooled is not None:  # the tokens are not read at all
            vectors.append(torch.from_numpy(np.asarray(side.pooled[rows], dtype=np.float32)))
        else:
            encoded = side[rows]
            vectors.append(masked_mean(encoded.tokens, encoded.mask).cpu())
    return F.normalize(torch.cat(vectors), dim=-1).to(device)


@torch.no_grad()
def _encode_towers(model: TwoTowerModel, split: CaptionSplit, paths: RunPaths, batch_size: int,
                   device: torch.device) -> GuideTargets:
    model.to(device).eval()
    frozen = frozen_for(model, split, paths.features, batch_size, device)
    preprocess = model.image_tower.preprocess()
    sides = [torch.cat([F.normalize(o.pooled.float(), dim=-1)
                        for o in split_outputs(model, split, side, preprocess, batch_size, device, cached, False)])
             for side, cached in (("image", frozen[0]), ("text", frozen[1]))]
    return GuideTargets(*sides)


def guide_identity(cfg: GuidedLossConfig, paths: RunPaths) -> dict[str, Any]:
    """What names the guide beyond the student's config (which holds the towers' settings): the
    teacher's checkpoint when the teacher guides."""
    return {"teacher": sha256_file(ModelDir(paths.teacher).weights)} if cfg.source == "teacher" else {}


def _guide_key(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit) -> dict[str, Any]:
    """What the guide's vectors of `split` are made from."""
    towers = ({"read_from": "teacher token store"} if cfg.source == "teacher"
              else {"towers": stage_key([cfg.image_tower, cfg.text_tower])})
    return {"source": cfg.source, **guide_identity(cfg, paths), **towers, "split": split.fingerprint()}


def _stored(directory: Path, device: torch.device) -> GuideTargets:
    return GuideTargets(*(torch.from_numpy(np.array(read_npy(directory / f"{side}.npy"))).to(device)
                          for side in ("images", "captions")))


def _compute(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit, batch_size: int,
             device: torch.device, teacher_store: TokenStore | None) -> GuideTargets:
    if cfg.source == "teacher":
        if teacher_store is None:
            raise ValueError("guided.source 'teacher' reads the teacher's token store: pass teacher_store")
        return GuideTargets(_store_side(teacher_store.images, device), _store_side(teacher_store.captions, device))
    image, text = build_towers(cfg.image_tower, cfg.text_tower, text_source(paths, cfg.text_tower, split),
                               feature_dim(split), fresh_text=False)
    for tower in (image, text):  # a guide is frozen, whatever its tower settings say
        set_trainable(tower, False)
    return _encode_towers(TwoTowerModel(image, text), split, paths, batch_size, device)


def guide_targets(cfg: GuidedLossConfig, paths: RunPaths, split: CaptionSplit, batch_size: int,
                  device: torch.device, teacher_store: TokenStore | None = None) -> GuideTargets:
    """The guide's vectors for every image and caption of `split`: read from `run_dir/guide/` when a
    student before this one stored them for the same guide and split, else computed and stored.
    `teacher_store`: the fitted teacher's token store of `split`, the teacher guide's source."""
    directory, key, fresh = keyed_dir(paths.guide, _guide_key(cfg, paths, split))
    if fresh:
        return _stored(directory, device)
    targets = _compute(cfg, paths, split, batch_size, device, teacher_store)
    with atomic_dir(directory) as tmp:
        for side, vectors in (("images", targets.images), ("captions", targets.captions)):
            np.save(tmp / f"{side}.npy", vectors.cpu().numpy())
        write_json(tmp / "manifest.json", key)
    return targets
