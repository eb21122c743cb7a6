"""Top-K score cache: each query's K candidates from a first-stage dual encoder, scored by the teacher.

Layout of a cache directory (arrays memory-mappable, ids index the split's images / captions):
  t2i_candidates.npy  int64 (n_captions, K)  each caption's candidate images, the generator's best first
  t2i_scores.npy      float32 (n_captions, K) teacher score of (candidate image, caption)
  i2t_candidates.npy  int64 (n_images, K)    each image's candidate captions
  i2t_scores.npy      float32 (n_images, K)  teacher score of (image, candidate caption)
  manifest.json       identity (format, split, teacher checkpoint hash, dataset fingerprint, K,
                      candidate generator, precision) plus when and from where it was made

Building one is a job over parts of `shard_queries` queries. Parts are written atomically into
`<cache>.partial/` as they finish, so a killed job resumes where it stopped, and under `torchrun`
each rank takes every world-th part; rank 0 merges. A part's scores depend only on its queries, so
the merged cache is the same whatever the number of processes or interruptions.
"""
from __future__ import annotations

import datetime
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.distributed import Ranks, shared_file
from core.io import atomic_dir, atomic_path, read_json, read_npy, write_json
from core.progress import progress as bar
from teacher.cache import MANIFEST, ScoreCacheMismatch, mismatches

FORMAT = "itr-distill/topk-cache/v1"
DIRECTIONS = ("t2i", "i2t")  # t2i: caption queries, image candidates; i2t: image queries, caption candidates
IDENTITY = "identity.json"
log = logging.getLogger("itr_distill")

# scores (len(queries), K) of the queries with their candidates (len(queries), K)
ScorePart = Callable[[str, np.ndarray, np.ndarray], np.ndarray]
# candidates per direction: {"t2i": (n_captions, K) image ids, "i2t": (n_images, K) caption ids}
Candidates = Callable[[], dict[str, np.ndarray]]


def topk_identity(teacher_sha256: str, dataset_fingerprint: str, split: str, n_images: int, n_captions: int,
                  k: int, generator: dict[str, Any], precision: str) -> dict[str, Any]:
    """The manifest fields a run checks before it uses a top-K cache."""
    return {"format": FORMAT, "split": split, "teacher_checkpoint_sha256": teacher_sha256,
            "dataset_fingerprint": dataset_fingerprint, "shape": [n_images, n_captions], "k": k,
            "candidate_generator": generator, "precision": precision}


def open_topk_cache(directory: str | Path, expected: dict[str, Any]) -> dict[str, np.ndarray]:
    """Memory-map a top-K cache whose manifest matches `expected`, else raise ScoreCacheMismatch."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST)
    diffs = mismatches(manifest, expected)
    if diffs:
        raise ScoreCacheMismatch(f"{directory}: top-K score cache does not match this run; rerun `itr-distill teacher "
                                 "score`.\n  " + "\n  ".join(diffs))
    n_images, n_captions = manifest["shape"]
    arrays = {}
    for direction, rows in (("t2i", n_captions), ("i2t", n_images)):
        for what in ("candidates", "scores"):
            path = directory / f"{direction}_{what}.npy"
            arrays[f"{direction}_{what}"] = array = read_npy(path)
            if array.shape != (rows, manifest["k"]):
                raise ScoreCacheMismatch(f"{path}: shape {array.shape}, its manifest needs {(rows, manifest['k'])}")
    return arrays


def _parts(n_queries: dict[str, int], shard: int) -> list[tuple[str, int, int]]:
    return [(d, start, min(n_queries[d], start + shard)) for d in DIRECTIONS for start in range(0, n_queries[d], shard)]


def _part_path(partial: Path, part: tuple[str, int, int]) -> Path:
    return partial / "parts" / f"{part[0]}-{part[1]:010d}-{part[2]:010d}.npy"


def _prepare(partial: Path, identity: dict[str, Any], candidates: Candidates, fresh: bool) -> None:
    """Rank 0: keep a partial job made for the same identity (unless `fresh`), else start afresh with new candidates."""
    if partial.is_dir() and (fresh or not (partial / IDENTITY).is_file()):
        shutil.rmtree(partial)
    if partial.is_dir() and read_json(partial / IDENTITY) != identity:
        log.info("discarding an unfinished top-K job made for another teacher, dataset or generator (%s)", partial)
        shutil.rmtree(partial)
    if all((partial / f"{d}_candidates.npy").is_file() for d in DIRECTIONS):
        return
    partial.mkdir(parents=True, exist_ok=True)
    for direction, ids in candidates().items():
        with atomic_path(partial / f"{direction}_candidates.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(ids, dtype=np.int64))
    write_json(partial / IDENTITY, identity)


def scores_from_dense(scores: np.ndarray) -> ScorePart:
    """A ScorePart that reads an all-pairs score matrix (n_images, n_captions) instead of scoring."""

    def score(direction: str, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if direction == "t2i":
            return np.asarray(scores[candidates, queries[:, None]], dtype=np.float32)
        return np.asarray(scores[queries[:, None], candidates], dtype=np.float32)

    return score


def build_topk_cache(directory: str | Path, identity: dict[str, Any], candidates: Candidates, score_part: ScorePart,
                     shard_queries: int, ranks: Ranks = Ranks(), progress: bool = True,
                     source: dict[str, Any] | None = None, fresh: bool = False) -> dict[str, int]:
    """Score this rank's parts (skipping those already done), then let rank 0 merge them into `directory`.

    `fresh` discards an unfinished job instead of resuming it. Returns counts of this rank's parts:
    {"parts": ..., "reused": ..., "scored": ...}.
    """
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    if ranks.is_main:
        _prepare(partial, identity, candidates, fresh)
    ranks.barrier()
    ids = {d: read_npy(shared_file(partial / f"{d}_candidates.npy", ranks)) for d in DIRECTIONS}
    n_images, n_captions = identity["shape"]
    expected_rows = {"t2i": n_captions, "i2t": n_images}
    for d in DIRECTIONS:
        if ids[d].shape != (expected_rows[d], identity["k"]):
            raise ValueError(f"{partial / f'{d}_candidates.npy'}: shape {ids[d].shape}, expected "
                             f"{(expected_rows[d], identity['k'])}")
    mine = ranks.mine(_parts(expected_rows, shard_queries))
    todo = [p for p in mine if not _part_path(partial, p).is_file()]
    if len(todo) < len(mine):
        log.info("rank %d: resuming, %d of %d parts already scored", ranks.rank, len(mine) - len(todo), len(mine))
    for part in bar(todo, f"teacher top-{identity['k']} scoring (rank {ranks.rank})", progress):
        direction, start, stop = part
        scores = np.asarray(score_part(direction, np.arange(start, stop), np.asarray(ids[direction][start:stop])),
                            dtype=np.float32)
        if scores.shape != (stop - start, identity["k"]) or not np.isfinite(scores).all():
            raise ValueError(f"teacher scores of part {part} have shape {scores.shape} or are not all finite")
        with atomic_path(_part_path(partial, part)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, scores)
    ranks.barrier()
    if ranks.is_main:
        _merge(directory, partial, identity, expected_rows, shard_queries, source or {})
    ranks.barrier()
    return {"parts": len(mine), "reused": len(mine) - len(todo), "scored": len(todo)}


def _merge(directory: Path, partial: Path, identity: dict[str, Any], rows: dict[str, int], shard: int,
           source: dict[str, Any]) -> None:
    with atomic_dir(directory) as tmp:
        for direction in DIRECTIONS:
            parts = [p for p in _parts(rows, shard) if p[0] == direction]
            np.save(tmp / f"{direction}_scores.npy", np.concatenate([read_npy(_part_path(partial, p)) for p in parts]))
            shutil.copyfile(partial / f"{direction}_candidates.npy", tmp / f"{direction}_candidates.npy")
        write_json(tmp / MANIFEST, {**identity, **source, "shard_queries": shard,
                                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    shutil.rmtree(partial)
