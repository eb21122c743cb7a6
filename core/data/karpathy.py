"""Reader for Karpathy split JSON (Flickr8k / Flickr30K / COCO) plus an image root."""
from __future__ import annotations

from pathlib import Path

from core.data.records import CaptionSplit
from core.io import read_json


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split_names: list[str],
    name: str,
    captions_per_image: int = 5,
) -> CaptionSplit:
    """Load the images whose `split` is in `split_names`, keeping the first `captions_per_image` captions.

    Errors name the file and the entry: a dataset with a hole must fail before training starts.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list (Karpathy split format)")
    if not image_root.is_dir():
        raise FileNotFoundError(f"{image_root}: image root is not a directory")
    root = image_root.resolve()
    paths: list[Path] = []
    captions: list[str] = []
    seen_splits: set[str] = set()
    for i, entry in enumerate(data["images"]):
        where = f"{json_path}: images[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        split = entry.get("split")
        if not isinstance(split, str):
            raise ValueError(f"{where}: missing 'split'")
        seen_splits.add(split)
        if split not in split_names:
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            raise ValueError(f"{where}: missing 'filename'")
        where = f"{json_path}: images[{i}] ({filename})"
        rel = Path(entry.get("filepath") or "") / filename
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{where}: image path points outside the image root {root}")
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file not found: {path}")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise ValueError(f"{where}: missing 'sentences' list")
        raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
        texts = [r.strip() for r in raws if isinstance(r, str) and r.strip()]
        if len(texts) < captions_per_image:
            raise ValueError(
                f"{where}: has {len(texts)} non-empty captions, {captions_per_image} are required"
            )
        paths.append(path)
        captions.extend(texts[:captions_per_image])
    if not paths:
        raise ValueError(
            f"{json_path}: no images in split(s) {split_names}; splits present: {sorted(seen_splits)}"
        )
    return CaptionSplit(
        name=name,
        source=str(json_path),
        captions=tuple(captions),
        captions_per_image=captions_per_image,
        image_paths=tuple(paths),
    )
