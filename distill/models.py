"""How a run's models are built, saved and rebuilt: `model.json` says what to build, the weights
file what to load (the files are named in `core.run_layout.ModelDir`)."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import load_weights
from core.config import StudentConfig, TeacherConfig, TextTowerConfig
from core.data.records import CaptionSplit
from core.io import read_json, write_json
from core.paths import resolve_path
from core.run_layout import ModelDir, RunPaths
from core.schema import build, to_dict
from core.towers import build_towers
from core.towers.scratch_text import build_scratch_text_model, scratch_model_dir
from student.model import DualEncoder
from teacher.model import ScanTeacher

log = logging.getLogger("itr_distill")


def text_source(paths: RunPaths, tower: TextTowerConfig, train: CaptionSplit) -> str:
    """The sentence-transformers source of a text tower; builds the scratch model on first use."""
    if tower.model != "scratch":
        return resolve_path(tower.model)
    directory = scratch_model_dir(paths.text_models, tower.scratch, tower.max_length, train.fingerprint())
    if not (directory / "modules.json").is_file():
        log.info("building scratch text model (WordPiece tokenizer from %d training captions) in %s",
                 train.n_captions, directory)
        build_scratch_text_model(train.captions, directory, tower.scratch, tower.max_length)
    return str(directory)


def feature_dim(split: CaptionSplit) -> int | None:
    return None if split.features is None else int(split.features.shape[-1])


def new_model(kind: str, model_cfg: TeacherConfig | StudentConfig, text_model: str,
              feat_dim: int | None) -> ScanTeacher | DualEncoder:
    """Build a teacher or student; scratch text encoders start from the current torch seed."""
    fresh = model_cfg.text_tower.model == "scratch"
    image, text = build_towers(model_cfg.image_tower, model_cfg.text_tower, text_model, feat_dim, fresh_text=fresh)
    return ScanTeacher(model_cfg, image, text) if kind == "teacher" else DualEncoder(model_cfg, image, text)


def save_model_info(model_dir: Path, kind: str, model_cfg: TeacherConfig | StudentConfig, text_model: str,
                    feat_dim: int | None, **extra: Any) -> None:
    """`model.json`: everything needed to rebuild the architecture before loading its weights."""
    local = Path(text_model)
    stored = os.path.relpath(local.resolve(), model_dir.resolve()) if local.is_dir() else text_model
    write_json(ModelDir(model_dir).info, {"kind": kind, "config": to_dict(model_cfg), "text_model": stored,
                                          "feature_dim": feat_dim, **extra})


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> ScanTeacher | DualEncoder:
    """Rebuild a saved teacher or student and load its weights (no hub download: weights come from the file)."""
    model_dir = Path(model_dir)
    files = ModelDir(model_dir)
    info = read_json(files.info)
    if info["kind"] == "packed":
        from distill.packing import load_pack

        return load_pack(model_dir, device)
    cls = TeacherConfig if info["kind"] == "teacher" else StudentConfig
    model_cfg = build(cls, info["config"], str(files.info))
    tower = model_cfg.image_tower  # every backbone's weights come from the file, none from a hub or package
    model_cfg.image_tower = dataclasses.replace(tower, pretrained=False, weights=None, also=[
        dataclasses.replace(b, pretrained=False, weights=None) for b in tower.also])
    text_model = info["text_model"]
    if (model_dir / text_model).is_dir():
        text_model = str((model_dir / text_model).resolve())
    image, text = build_towers(model_cfg.image_tower, model_cfg.text_tower, text_model, info["feature_dim"], fresh_text=True)
    model = ScanTeacher(model_cfg, image, text) if info["kind"] == "teacher" else DualEncoder(model_cfg, image, text)
    load_weights(model, files.weights)
    return model.to(device).eval()
