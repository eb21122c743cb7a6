"""All-pairs score cache: the teacher's scores of a split, memory-mappable, guarded by a manifest
(the top-K cache of `teacher.topk` shares the manifest check).

Layout of a cache directory:
  scores.npy     float32 (n_images, n_captions) for the all-pairs generator
  manifest.json  format, split, shape, teacher checkpoint hash, dataset fingerprint, candidate generator

A cache is only ever used for the run it was made for: `open_score_cache` compares the manifest
with what the run expects and refuses, naming every field that differs.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic_dir, read_json, read_npy, write_json

FORMAT = "itr-distill/score-cache/v1"
MANIFEST, SCORES = "manifest.json", "scores.npy"


class ScoreCacheMismatch(ValueError):
    """The cache on disk was made for another teacher, dataset or candidate generator."""


def cache_identity(teacher_sha256: str, dataset_fingerprint: str, split: str, n_images: int, n_captions: int) -> dict[str, Any]:
    """The manifest fields a run checks before it uses a cache."""
    return {
        "format": FORMAT,
        "split": split,
        "teacher_checkpoint_sha256": teacher_sha256,
        "dataset_fingerprint": dataset_fingerprint,
        "candidate_generator": {"kind": "all-pairs"},
        "shape": [n_images, n_captions],
    }


def write_score_cache(directory: str | Path, scores: np.ndarray, identity: dict[str, Any]) -> Path:
    """Write scores and manifest into `directory` atomically (an old cache stays until the new one is whole)."""
    scores = np.asarray(scores, dtype=np.float32)
    if list(scores.shape) != identity["shape"]:
        raise ValueError(f"scores have shape {scores.shape}, manifest says {identity['shape']}")
    if not np.isfinite(scores).all():
        raise ValueError("refusing to cache teacher scores that contain NaN or Inf")
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        np.save(tmp / SCORES, scores)
        write_json(tmp / MANIFEST, {**identity, "dtype": "float32",
                                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return directory


def mismatches(manifest: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """One line per manifest field that differs from what the run expects."""
    return [f"{key}: cache has {manifest.get(key)!r}, this run needs {value!r}"
            for key, value in expected.items() if manifest.get(key) != value]


def open_score_cache(directory: str | Path, expected: dict[str, Any]) -> np.ndarray:
    """Memory-map the scores of a cache whose manifest matches `expected`, else raise ScoreCacheMismatch."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST)
    diffs = mismatches(manifest, expected)
    if diffs:
        raise ScoreCacheMismatch(f"{directory}: score cache does not match this run; rerun `itr-distill teacher score`.\n  "
                                 + "\n  ".join(diffs))
    scores = read_npy(directory / SCORES)
    if list(scores.shape) != manifest["shape"]:
        raise ScoreCacheMismatch(f"{directory / SCORES}: shape {scores.shape} differs from its manifest {manifest['shape']}")
    return scores
