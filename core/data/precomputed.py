"""Reader for SCAN / VSE++ precomputed region features: `{split}_ims.npy` + `{split}_caps.txt`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.records import CaptionSplit
from core.io import read_npy


def _read_one(features_dir: Path, split: str, k: int) -> tuple[np.ndarray, list[str]]:
    ims_path, caps_path = features_dir / f"{split}_ims.npy", features_dir / f"{split}_caps.txt"
    if not caps_path.is_file():
        raise FileNotFoundError(f"{caps_path}: file not found")
    feats = read_npy(ims_path)
    if feats.ndim != 3:
        raise ValueError(f"{ims_path}: expected (images, regions, dim), got shape {feats.shape}")
    try:
        lines = caps_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{caps_path}: not UTF-8 text ({exc})") from exc
    captions = [line.strip() for line in lines if line.strip()]
    if len(captions) != len(lines) - (1 if lines and not lines[-1].strip() else 0):
        raise ValueError(f"{caps_path}: has empty caption lines")
    if feats.shape[0] == len(captions) and k > 1:
        feats = feats[::k]  # some releases repeat each image's features once per caption
    if feats.shape[0] * k != len(captions):
        raise ValueError(
            f"{caps_path}: {len(captions)} captions for {feats.shape[0]} images in {ims_path.name}; "
            f"expected {k} per image"
        )
    return feats, captions


def read_precomputed(
    features_dir: str | Path, split_names: list[str], name: str, captions_per_image: int = 5
) -> CaptionSplit:
    """Load the listed splits that exist in `features_dir` (memory-mapped when there is only one)."""
    features_dir = Path(features_dir)
    present = [s for s in split_names if (features_dir / f"{s}_ims.npy").exists()]
    if not present:
        raise FileNotFoundError(f"{features_dir}: none of {[f'{s}_ims.npy' for s in split_names]} found")
    parts = [_read_one(features_dir, s, captions_per_image) for s in present]
    dims = {p[0].shape[1:] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"{features_dir}: splits {present} have different feature shapes {sorted(dims)}")
    feats = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    return CaptionSplit(
        name=name,
        source=str(features_dir),
        captions=tuple(c for p in parts for c in p[1]),
        captions_per_image=captions_per_image,
        features=feats,
    )
