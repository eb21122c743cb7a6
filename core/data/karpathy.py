"""Reader for Karpathy split JSON (Flickr8k / Flickr30K / COCO) plus an image root."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.data.records import BadEntry, CaptionSplit
from core.data.split_names import selected
from core.data.validate import CheckRunner, check_files, image_problem
from core.io import read_json

SHOWN = 10  # bad entries spelled out in an error; the rest are counted


class BadDataError(ValueError):
    """Every bad entry of a dataset file in one error: the first SHOWN, then a count."""

    def __init__(self, source: Path, bad: Sequence[BadEntry]):
        self.source, self.bad = source, tuple(bad)
        lines = [f"  images[{b.index}] ({b.filename or '?'}): {b.reason}" for b in bad[:SHOWN]]
        if len(bad) > SHOWN:
            lines.append(f"  ... and {len(bad) - SHOWN} more")
        super().__init__("\n".join([
            f"{source}: {len(bad)} bad image entr{'y' if len(bad) == 1 else 'ies'} (data.skip_bad: true or "
            "--skip-bad leaves them out and lists them in the run's bad_data.json):", *lines]))


def _parse_entry(entry: Any, root: Path, k: int) -> tuple[Path, list[str]]:
    """An entry's image path and first `k` captions; ValueError(the problem) when it is unusable."""
    if not isinstance(entry, dict):
        raise ValueError("expected an object")
    if not isinstance(entry.get("split"), str):
        raise ValueError("missing 'split'")
    filename, folder = entry.get("filename"), entry.get("filepath") or ""
    if not isinstance(filename, str) or not filename:
        raise ValueError("missing 'filename'")
    if not isinstance(folder, str) or "\0" in filename + folder:
        raise ValueError("'filepath'/'filename' is not a valid path")
    path = (root / folder / filename).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"image path points outside the image root {root}")
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        raise ValueError("missing 'sentences' list")
    raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
    odd = [j for j, raw in enumerate(raws) if not isinstance(raw, str)]
    if odd:
        raise ValueError(f"sentences[{odd[0]}] has no string 'raw' caption")
    texts = [raw.strip() for raw in raws if raw.strip()]
    if len(texts) < k:
        raise ValueError(f"has {len(texts)} non-empty captions, {k} are required")
    return path, texts[:k]


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split_names: list[str],
    name: str,
    captions_per_image: int = 5,
    skip_bad: bool = False,
    limit: int | None = None,
    run_checks: CheckRunner = check_files,
) -> CaptionSplit:
    """Load the images whose `split` is in `split_names` (a name may slice its split, `train[:-250]`,
    see core.data.split_names), keeping the first `captions_per_image` captions.

    Every entry is checked before anything trains on it (inside the image root, decodes, enough
    non-empty string captions) and all problems come in one `BadDataError` naming the file and
    the entries; with `skip_bad` those entries are left out and listed in `CaptionSplit.skipped`.
    `limit` keeps the first N entries of the splits before the images are decoded, so a quick run
    does not check the whole set; `run_checks` applies the image check (the stages pass a cache).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list (Karpathy split format)")
    if not image_root.is_dir():
        raise FileNotFoundError(f"{image_root}: image root is not a directory")
    root = image_root.resolve()
    parsed: list[tuple[int, str, Path, list[str]]] = []
    bad: list[BadEntry] = []
    entry_splits = [e.get("split") if isinstance(e, dict) and isinstance(e.get("split"), str) else None
                    for e in data["images"]]
    seen_splits = {s for s in entry_splits if s is not None}
    for i, (entry, split, take) in enumerate(zip(data["images"], entry_splits, selected(entry_splits, split_names), strict=True)):
        if split is not None and not take:
            continue
        if limit is not None and len(parsed) + len(bad) >= limit:
            break
        filename = entry.get("filename") if isinstance(entry, dict) else None
        filename = filename if isinstance(filename, str) else ""
        try:
            parsed.append((i, filename, *_parse_entry(entry, root, captions_per_image)))
        except (ValueError, OSError) as exc:
            bad.append(BadEntry(i, filename, str(exc)))
    if not parsed and not bad:
        raise ValueError(
            f"{json_path}: no images in split(s) {split_names}; splits present: {sorted(seen_splits)}"
        )
    undecodable = run_checks([path for _, _, path, _ in parsed], image_problem)
    bad += [BadEntry(i, filename, undecodable[path]) for i, filename, path, _ in parsed if path in undecodable]
    bad.sort(key=lambda b: b.index)
    kept = [(path, texts) for _, _, path, texts in parsed if path not in undecodable]
    if bad and not skip_bad:
        raise BadDataError(json_path, bad)
    if not kept:
        raise ValueError(f"{json_path}: all {len(bad)} entries of split(s) {split_names} are bad; nothing to keep")
    return CaptionSplit(
        name=name,
        source=str(json_path),
        captions=tuple(c for _, texts in kept for c in texts),
        captions_per_image=captions_per_image,
        image_paths=tuple(path for path, _ in kept),
        skipped=tuple(bad),
    )
