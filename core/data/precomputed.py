"""Reader for SCAN / VSE++ precomputed region features: `{split}_ims.npy` + `{split}_caps.txt`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.records import CaptionSplit
from core.data.rows import ConcatenatedRows
from core.data.validate import CheckRunner, check_files
from core.io import read_npy

BLOCK_BYTES = 64 << 20  # the finiteness check reads feature files in blocks of this size


def feature_problem(path: Path) -> str | None:
    """NaN or Inf in a (images, regions, dim) feature file, by image (read in blocks: files can exceed memory)."""
    feats = read_npy(path)
    rows = max(1, BLOCK_BYTES // max(1, feats[:1].nbytes))
    bad = np.concatenate([start + np.flatnonzero(~np.isfinite(feats[start:start + rows]).all(axis=(1, 2)))
                          for start in range(0, len(feats), rows)])
    if not bad.size:
        return None
    return f"{path}: {bad.size} of {len(feats)} images have NaN or Inf features (the first: row {bad[0]})"


def _read_captions(caps_path: Path) -> list[str]:
    """One caption per line; captions belong to images by line number, so no line may be empty."""
    if not caps_path.is_file():
        raise FileNotFoundError(f"{caps_path}: file not found")
    try:
        lines = caps_path.read_text(encoding="utf-8").split("\n")  # not splitlines(): it also splits at \f, \x1c...
    except UnicodeDecodeError as exc:
        raise ValueError(f"{caps_path}: not UTF-8 text ({exc})") from exc
    while lines and not lines[-1].strip():  # blank lines at the end only end the file
        lines.pop()
    empty = [n + 1 for n, line in enumerate(lines) if not line.strip()]
    if empty:
        raise ValueError(
            f"{caps_path}: {len(empty)} empty caption line(s), the first at line {empty[0]}; captions belong to "
            "images by line number, so they cannot be skipped (--skip-bad does not apply): fix the file"
        )
    return [line.strip() for line in lines]


def _read_one(features_dir: Path, split: str, k: int, run_checks: CheckRunner) -> tuple[np.ndarray, list[str]]:
    ims_path, caps_path = features_dir / f"{split}_ims.npy", features_dir / f"{split}_caps.txt"
    captions = _read_captions(caps_path)
    feats = read_npy(ims_path)
    if feats.ndim != 3 or 0 in feats.shape or feats.dtype.kind not in "fiu":
        raise ValueError(f"{ims_path}: expected (images, regions, dim) numbers, got {feats.dtype} of shape {feats.shape}")
    problems = run_checks([ims_path], feature_problem)
    if problems:
        raise ValueError(problems[ims_path])
    if feats.shape[0] == len(captions) and k > 1:
        feats = feats[::k]  # some releases repeat each image's features once per caption
    if feats.shape[0] * k != len(captions):
        raise ValueError(
            f"{caps_path}: {len(captions)} captions for {feats.shape[0]} images in {ims_path.name}; "
            f"expected {k} per image"
        )
    return feats, captions


def read_precomputed(
    features_dir: str | Path, split_names: list[str], name: str, captions_per_image: int = 5,
    run_checks: CheckRunner = check_files,
) -> CaptionSplit:
    """Load the listed splits that exist in `features_dir`, memory-mapped, in the order listed.

    Several splits (COCO's train + restval) are read as one `ConcatenatedRows` view of their
    files, never concatenated in memory.

    Wrong shapes, NaN/Inf features and empty or non-UTF-8 caption lines are errors naming the
    file; `run_checks` applies the finiteness check (the stages pass a cache).
    """
    features_dir = Path(features_dir)
    present = [s for s in split_names if (features_dir / f"{s}_ims.npy").exists()]
    if not present:
        raise FileNotFoundError(f"{features_dir}: none of {[f'{s}_ims.npy' for s in split_names]} found")
    parts = [_read_one(features_dir, s, captions_per_image, run_checks) for s in present]
    dims = {p[0].shape[1:] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"{features_dir}: splits {present} have different feature shapes "
                         f"(regions, dim) {sorted(dims)}")
    feats = parts[0][0] if len(parts) == 1 else ConcatenatedRows([p[0] for p in parts])
    return CaptionSplit(
        name=name,
        source=str(features_dir),
        captions=tuple(c for p in parts for c in p[1]),
        captions_per_image=captions_per_image,
        features=feats,
    )
