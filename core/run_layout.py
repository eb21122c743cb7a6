"""The run directory's layout: every path a stage reads or writes, named here and nowhere else.

Directories that hold a file format of their own (a score cache, a token store, a frozen-feature
cache, the export, a checkpoint) are named here; the files inside them are that format's business
(its module is named in `LAYOUT`). Eval and report read the layout from here too, so a path is spelled
once for every package (`core` imports nothing of ours, so every package may read it).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from core.io import read_json, sha256_json, write_json

STAGE_FILE = "stage.json"

# (pattern relative to the run directory, what it holds); `teachers/<name>-seed<k>/` is a run directory itself
LAYOUT: tuple[tuple[str, str], ...] = (
    ("config.yaml", "the resolved config of the last command"),
    ("data/*", "generated dataset, synthetic format only (core/data/synthetic.py)"),
    ("data.json", "split sizes and fingerprints"),
    ("bad_data.json", "bad entries of each split that data.skip_bad left out, with the reasons"),
    ("file_checks.json", "cached results of the image decode / feature finiteness checks (core/data/validate.py)"),
    ("text_models/scratch-*/*", "text models trained from scratch (sentence-transformers directories)"),
    ("features/*/*", "cached outputs of frozen towers (core/towers/frozen.py)"),
    ("images/*/*", "the train split's images decoded, resized and cropped once, uint8, for `train.image_cache: uint8` "
                   "(core/data/image_cache.py)"),
    ("teacher/*", "the teacher: a model directory (`ModelDir`)"),
    ("guide/*/*", "the guided term's target vectors of a split, per guide (distill/guide.py)"),
    ("teacher_tokens/*/*", "the teacher's token store of a split (teacher/tokens.py), read by every scorer"),
    ("teacher_ensemble/ensemble.json", "members, standardisation and weights of teacher.ensemble"),
    ("teacher_ensemble/" + STAGE_FILE, "what the ensemble's weights were chosen from"),
    ("scores/*-topk/*", "top-K teacher score cache of a split (teacher/topk.py); `.partial/` while unfinished"),
    ("scores/*-topk.partial/*", "an unfinished top-K cache, resumable (teacher/topk.py)"),
    ("scores/*/*", "all-pairs teacher score cache of a split (teacher/cache.py)"),
    ("students/*-seed*/*", "a student: a model directory (`ModelDir`)"),
    ("students/*-pack/*", "students of several seeds packed into one dual encoder: a model directory (`ModelDir`; "
                          "its weights file holds the members' weights and checksums, distill/packing.py)"),
    ("export/*", "the exported student: ONNX graphs, tokenizer, manifest.json (export/onnx_export.py)"),
    ("eval/results.json", "metrics of every system (eval/records.py)"),
    ("eval/clip_benchmark/*.json", "one CLIP_benchmark result file per evaluated system (eval/clip_benchmark.py)"),
    ("eval/examples.json", "each system's top-5 for seeded queries, and where teacher and student disagree (eval/examples.py)"),
    ("bench/latency.json", "latency rows and the machine"),
    ("bench/*", "the benchmark's tables: bench.md, matrix.csv, scaling.csv (eval/bench_tables.py)"),
    ("ablation/ablation.*", "the student ablation table, JSON and Markdown (`itr-distill ablate`)"),
    ("ablation/teachers.*", "the teacher ablation table, JSON and Markdown (`itr-distill ablate-teachers`)"),
    ("ablation/*curves.png", "training curves of each ablation's models"),
    ("figures/*.png", "the report's figures"),
    ("stages.json", "each stage of the last `run`: wall time, peak memory, disk written, teacher pairs"),
    ("report.md", "the report"),
    ("report.json", "the report's figures and checks as data"),
    ("shared_check/*.txt", "a random token rank 0 of a torchrun job writes and every rank reads back, removed "
                           "once read: the run directory must be shared by every node (core/distributed.py)"),
)

MODEL_LAYOUT: tuple[tuple[str, str], ...] = (
    ("model.json", "everything needed to rebuild the architecture (distill/models.py)"),
    ("model.safetensors", "the selected epoch's weights"),
    ("training.json", "the selected epoch, the selection rule and each epoch's record"),
    ("train_log.jsonl", "every step's loss terms and each epoch's end"),
    (STAGE_FILE, "a hash of what the model was made from"),
    ("checkpoints/epoch_*/*", "per-epoch checkpoints, everything an exact resume needs (distill/checkpoints.py)"),
)


class ModelDir:
    """The files of a trained model's directory (the teacher, a student, an ablation row)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    info = property(lambda self: self.root / "model.json")
    weights = property(lambda self: self.root / "model.safetensors")
    training = property(lambda self: self.root / "training.json")
    train_log = property(lambda self: self.root / "train_log.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")  # epoch directories: distill/checkpoints.py


class RunPaths:
    """Paths of one run directory (see `LAYOUT`)."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    config = property(lambda self: self.root / "config.yaml")
    data = property(lambda self: self.root / "data")
    data_summary = property(lambda self: self.root / "data.json")
    bad_data = property(lambda self: self.root / "bad_data.json")
    file_checks = property(lambda self: self.root / "file_checks.json")
    text_models = property(lambda self: self.root / "text_models")
    features = property(lambda self: self.root / "features")
    images = property(lambda self: self.root / "images")  # uint8 image caches: core/data/image_cache.py
    teacher = property(lambda self: self.root / "teacher")
    guide = property(lambda self: self.root / "guide")
    teacher_ensemble = property(lambda self: self.root / "teacher_ensemble")
    ensemble_spec = property(lambda self: self.root / "teacher_ensemble" / "ensemble.json")
    students = property(lambda self: self.root / "students")
    export = property(lambda self: self.root / "export")
    eval_results = property(lambda self: self.root / "eval" / "results.json")
    clip_benchmark_dir = property(lambda self: self.root / "eval" / "clip_benchmark")
    eval_examples = property(lambda self: self.root / "eval" / "examples.json")
    bench = property(lambda self: self.root / "bench" / "latency.json")
    student_ablation = property(lambda self: self.root / "ablation" / "ablation.json")
    teacher_ablation = property(lambda self: self.root / "ablation" / "teachers.json")
    student_ablation_curves = property(lambda self: self.root / "ablation" / "curves.png")
    teacher_ablation_curves = property(lambda self: self.root / "ablation" / "teacher_curves.png")
    figures = property(lambda self: self.root / "figures")
    stage_log = property(lambda self: self.root / "stages.json")
    report = property(lambda self: self.root / "report.md")
    report_data = property(lambda self: self.root / "report.json")

    def shared_check(self, token: str) -> Path:
        """The marker file a torchrun job's rank 0 writes for every rank to read (core/distributed.py)."""
        return self.root / "shared_check" / f"{token}.txt"

    def scores(self, split: str) -> Path:
        return self.root / "scores" / split

    def topk_scores(self, split: str) -> Path:
        return self.root / "scores" / f"{split}-topk"

    def clip_benchmark(self, system: str) -> Path:
        """A system's CLIP_benchmark result file (eval/clip_benchmark.py)."""
        return self.clip_benchmark_dir / f"{system.replace('/', '_')}.json"

    def teacher_tokens(self, split: str) -> Path:
        return self.root / "teacher_tokens" / split

    def student(self, variant: str, seed: int) -> Path:
        return self.students / f"{variant}-seed{seed}"

    def pack(self, variant: str) -> Path:
        """The students of `variant` packed into one dual encoder (`itr-distill pack`)."""
        return self.students / f"{variant}-pack"

    def teacher_variant(self, name: str, seed: int) -> Path:
        """A teacher variant (`ablate-teachers`) or ensemble member: a run directory of its own."""
        return self.root / "teachers" / f"{name}-seed{seed}"


def describe(relative: str | Path) -> str | None:
    """What the layout says a file at `relative` (to the run directory) holds; None when it names no such file."""
    parts = Path(relative).parts
    if len(parts) > 2 and parts[0] == "teachers" and fnmatch.fnmatchcase(parts[1], "*-seed*"):
        return describe(Path(*parts[2:]))
    path = Path(relative).as_posix()
    for pattern, what in LAYOUT:
        if fnmatch.fnmatchcase(path, pattern):
            if what.endswith("(`ModelDir`)"):
                inner = Path(*parts[2:]) if parts[0] == "students" else Path(*parts[1:])
                return _describe_model_file(inner.as_posix())
            return what
    return None


def _describe_model_file(relative: str) -> str | None:
    return next((what for pattern, what in MODEL_LAYOUT if fnmatch.fnmatchcase(relative, pattern)), None)


def stamp(directory: Path, key: dict[str, Any]) -> None:
    """Record what `directory` was made from."""
    write_json(directory / STAGE_FILE, {"sha256": sha256_json(key), "key": key})


def up_to_date(directory: Path, key: dict[str, Any]) -> bool:
    """Whether `directory` was made from `key` (its stamp matches)."""
    marker = directory / STAGE_FILE
    return marker.is_file() and read_json(marker).get("sha256") == sha256_json(key)
