"""The run directory: where each stage's files live, and how models are saved and rebuilt.

  <run_dir>/config.yaml                    the resolved config of the last command
  <run_dir>/data/                          generated dataset (synthetic format only)
  <run_dir>/data.json                      split sizes and fingerprints
  <run_dir>/bad_data.json                  bad entries of each split that data.skip_bad left out, with the reasons
  <run_dir>/file_checks.json               cached results of the image decode / feature finiteness checks
  <run_dir>/text_models/scratch-<hash>/    text models trained from scratch (sentence-transformers dirs)
  <run_dir>/features/<key>/                cached outputs of frozen towers (tokens.npy, mask.npy, pooled.npy)
  <run_dir>/teacher/                       model.json, model.safetensors, training.json, train_log.jsonl, checkpoints/
  <run_dir>/teacher_tokens/<split>/        the teacher's token store (teacher/tokens.py), read by every scorer
  <run_dir>/teachers/<name>-seed<k>/       teacher variants (ablate-teachers) and ensemble members: each a run directory
  <run_dir>/teacher_ensemble/              ensemble.json: the members, standardisation and weights of teacher.ensemble
  <run_dir>/scores/<split>/                all-pairs teacher score cache (manifest.json, scores.npy)
  <run_dir>/scores/<split>-topk/           top-K teacher score cache (teacher/topk.py); <...>.partial/ while unfinished
  <run_dir>/students/<variant>-seed<k>/    like teacher/
  <run_dir>/export/                        image_encoder.onnx, text_encoder.onnx, tokenizer/, manifest.json
  <run_dir>/eval/results.json              metrics of every system
  <run_dir>/bench/latency.json             latency rows and the machine
  <run_dir>/stages.json                    each stage of the last `run`: wall time, peak memory, disk written, teacher pairs
  <run_dir>/report.md, report.json

Every stage output directory carries `stage.json`: a hash of what it was made from, so `run`
skips a stage whose output is up to date and redoes it when its inputs changed.
"""
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
from core.io import read_json, sha256_json, write_json
from core.paths import resolve_path
from core.schema import build, to_dict
from core.towers import build_towers
from core.towers.scratch_text import build_scratch_text_model, scratch_model_dir
from student.model import DualEncoder
from teacher.model import ScanTeacher

log = logging.getLogger("itr_distill")


class RunPaths:
    """Paths of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    config = property(lambda self: self.root / "config.yaml")
    data = property(lambda self: self.root / "data")
    data_summary = property(lambda self: self.root / "data.json")
    bad_data = property(lambda self: self.root / "bad_data.json")
    file_checks = property(lambda self: self.root / "file_checks.json")
    text_models = property(lambda self: self.root / "text_models")
    teacher = property(lambda self: self.root / "teacher")
    teacher_ensemble = property(lambda self: self.root / "teacher_ensemble")
    export = property(lambda self: self.root / "export")
    features = property(lambda self: self.root / "features")
    eval_results = property(lambda self: self.root / "eval" / "results.json")
    bench = property(lambda self: self.root / "bench" / "latency.json")
    stage_log = property(lambda self: self.root / "stages.json")

    def scores(self, split: str) -> Path:
        return self.root / "scores" / split

    def teacher_tokens(self, split: str) -> Path:
        return self.root / "teacher_tokens" / split

    def topk_scores(self, split: str) -> Path:
        return self.root / "scores" / f"{split}-topk"

    def student(self, variant: str, seed: int) -> Path:
        return self.root / "students" / f"{variant}-seed{seed}"


def stamp(directory: Path, key: dict[str, Any]) -> None:
    """Record what `directory` was made from."""
    write_json(directory / "stage.json", {"sha256": sha256_json(key), "key": key})


def up_to_date(directory: Path, key: dict[str, Any]) -> bool:
    marker = directory / "stage.json"
    return marker.is_file() and read_json(marker).get("sha256") == sha256_json(key)


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
    write_json(model_dir / "model.json", {"kind": kind, "config": to_dict(model_cfg), "text_model": stored,
                                          "feature_dim": feat_dim, **extra})


def load_model(model_dir: str | Path, device: torch.device | str = "cpu",
               weights: str = "model.safetensors") -> ScanTeacher | DualEncoder:
    """Rebuild a saved teacher or student and load its weights (no hub download: weights come from the file)."""
    model_dir = Path(model_dir)
    info = read_json(model_dir / "model.json")
    cls = TeacherConfig if info["kind"] == "teacher" else StudentConfig
    model_cfg = build(cls, info["config"], str(model_dir / "model.json"))
    model_cfg.image_tower = dataclasses.replace(model_cfg.image_tower, pretrained=False, weights=None)
    text_model = info["text_model"]
    if (model_dir / text_model).is_dir():
        text_model = str((model_dir / text_model).resolve())
    image, text = build_towers(model_cfg.image_tower, model_cfg.text_tower, text_model, info["feature_dim"], fresh_text=True)
    model = ScanTeacher(model_cfg, image, text) if info["kind"] == "teacher" else DualEncoder(model_cfg, image, text)
    load_weights(model, model_dir / weights)
    return model.to(device).eval()
