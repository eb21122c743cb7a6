"""Shared fixtures: a tiny synthetic dataset, tiny towers, and a tiny run config (CPU, seconds)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_TOWERS = {
    "image_tower": {"model_kwargs": {"channels": [8, 16, 16, 32], "stem_width": 8, "output_stride": 16}, "image_size": 32},
    "text_tower": {"scratch": {"vocab_size": 120, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                               "intermediate_size": 64}, "max_length": 24},
    "embed_dim": 32,
    "train": {"epochs": 2, "batch_size": 16, "warmup_steps": 2},
}


# The tiny sets gate on 16 images: one flipped query moves t2i R@1 by 1.25 points and i2t R@1 by 6.25,
# so a tiny random model's near-ties would trip the default per-point bounds on reduced precision.
TINY_GATES = {"fp16": {"min_cosine": 0.999, "max_r1_drop": 15.0}, "int8": {"min_cosine": 0.98, "max_r1_drop": 15.0}}


# Seconds, not minutes: two small shapes, two backends, galleries of 16-256 images; the teacher's token
# budget (~100 KiB) makes its 256-image point an extrapolated one.
TINY_BENCH = {"warmup": 1, "repeats": 3, "queries": 3, "batch_sizes": [1, 4], "caption_lengths": [4, 8],
              "matrix_backends": ["pytorch-fp32", "onnxruntime-cpu"], "matrix_budget_s": 0.01,
              "gallery_sizes": [16, 64, 256], "scaling_budget_s": 0.01, "teacher_max_gib": 1e-4}


def tiny_config_dict(run_dir: Path, data_dir: Path) -> dict:
    """A complete run that trains in seconds on the tiny synthetic set."""
    return {
        "run_dir": str(run_dir),
        "data": {"format": "synthetic", "path": str(data_dir),
                 "synthetic": {"n_train": 48, "n_val": 16, "n_test": 16, "image_size": 32}},
        "teacher": TINY_TOWERS,
        "scores": {"top_k": 8},
        "student": {**TINY_TOWERS, "losses": {"cached_kd": {"weight": 1.0, "candidates": 4}, "concept": {"weight": 0.1}}},
        "experiment": {"seeds": [0, 1]},
        "export": {"gate": TINY_GATES, "latency_repeats": 2},
        "bench": TINY_BENCH,
    }


STAGE_CHAIN = (["data"], ["teacher", "fit"], ["teacher", "score", "--cache", "all-pairs"],
               ["distill", "--variant", "baseline"], ["teacher", "score", "--cache", "top-k"],
               ["distill", "--variant", "distilled"], ["eval"])


def run_stage_chain(cfg: dict, config: Path) -> Path:
    """Write `cfg` to `config` and run the stages a distilled student needs, one command each, through eval."""
    import yaml

    from distill.cli import main

    config.write_text(yaml.safe_dump(cfg))
    for stage in STAGE_CHAIN:
        assert main([*stage, str(config)]) == 0, stage
    return config


def assert_layout_names(run: Path) -> None:
    """Every file a run wrote is one that `core.run_layout` names (no stage spells its own path)."""
    from core.run_layout import describe

    files = [p.relative_to(run) for p in run.rglob("*") if p.is_file() or (p.is_symlink() and not p.is_dir())]
    assert files, run
    unnamed = [str(f) for f in files if describe(f) is None]
    assert not unnamed, f"files the run layout does not name: {unnamed}"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from core.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, n_train=48, n_val=16, n_test=16, image_size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def splits(synthetic_dir):
    from core.data.karpathy import read_karpathy
    from core.data.synthetic import JSON_NAME

    return {s: read_karpathy(synthetic_dir / JSON_NAME, synthetic_dir / "images", [s], s) for s in ("train", "val", "test")}


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory, splits) -> Path:
    from core.config import ScratchTextConfig
    from core.towers.scratch_text import build_scratch_text_model

    cfg = ScratchTextConfig(**TINY_TOWERS["text_tower"]["scratch"])
    return build_scratch_text_model(splits["train"].captions, tmp_path_factory.mktemp("text") / "scratch", cfg, 24)


def build_tiny(kind: str, text_model_dir: Path, feature_dim: int | None = None, **overrides):
    """A tiny teacher or student (eval mode, seed 0); `overrides` replace top-level config sections."""
    import torch

    from core.config import StudentConfig, TeacherConfig
    from core.schema import build
    from distill.models import new_model

    cfg = build(TeacherConfig if kind == "teacher" else StudentConfig, {**TINY_TOWERS, **overrides})
    torch.manual_seed(0)
    return new_model(kind, cfg, str(text_model_dir), feature_dim).eval()


@pytest.fixture()
def tiny_student(text_model_dir):
    return build_tiny("student", text_model_dir)


@pytest.fixture()
def tiny_teacher(text_model_dir):
    return build_tiny("teacher", text_model_dir)
