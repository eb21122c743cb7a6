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
from typing import Any, Callable

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


def write_score_cache(directory: str | Path, identity: dict[str, Any], fill: Callable[[np.ndarray], Any],
                      check_rows: int = 4096) -> Path:
    """Create the scores as a memory-mapped file of the manifest's shape, let `fill` write them (in
    blocks: the matrix never has to fit in memory), check them in blocks of rows, and move the cache
    into place with its manifest atomically (an old cache stays until the new one is whole)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        scores = np.lib.format.open_memmap(tmp / SCORES, "w+", np.float32, tuple(identity["shape"]))
        fill(scores)
        for start in range(0, len(scores), check_rows):
            if not np.isfinite(scores[start:start + check_rows]).all():
                raise ValueError("refusing to cache teacher scores that contain NaN or Inf")
        scores.flush()
        del scores
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
