"""File checks that run before training: every image must decode, every feature file be finite.

Readers take a `CheckRunner` that applies a per-file check to their files. `check_files` runs it
on every file; `CheckCache` remembers the results in a JSON file by (size, mtime), so the stages
after the first decode only new or changed files instead of the whole dataset again.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageFile

from core.data.images import load_image
from core.io import read_json, write_json
from core.progress import progress

FileCheck = Callable[[Path], "str | None"]  # why a file is bad (naming it), None when it is fine
CheckRunner = Callable[[Sequence[Path], FileCheck], dict[Path, str]]

# JPEGs decode at 1/2-1/8 scale (no smaller than this): every byte is still decoded, so a truncated
# file still fails, 3x faster than a full decode for a 500x375 photo (1.3x for 224x224).
CHECK_DRAFT = (64, 64)
_CACHE_VERSION = 1


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image, or None when it decodes."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a library may set it globally; truncated files would then pass
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set (by an imported library?): "
                           "truncated images cannot be detected")
    try:
        load_image(path, draft=CHECK_DRAFT)
    except (ValueError, FileNotFoundError) as exc:
        return str(exc)
    return None


def check_files(paths: Sequence[Path], check: FileCheck) -> dict[Path, str]:
    """Run `check` on every file; the files with a problem, and the problem (decoding a large set takes
    minutes, so it reports its progress)."""
    return {path: problem for path in progress(paths, f"file check ({check.__name__})")
            if (problem := check(path)) is not None}


def _environment() -> dict[str, Any]:
    """What a cached result depends on besides the file itself."""
    return {"version": _CACHE_VERSION, "pillow": PIL.__version__, "numpy": np.__version__,
            "max_image_pixels": Image.MAX_IMAGE_PIXELS, "draft": list(CHECK_DRAFT)}


class CheckCache:
    """A `CheckRunner` that remembers each (check, file) result in `path`, keyed by the file's size
    and modification time; a different Pillow, NumPy or pixel limit starts the cache afresh."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, paths: Sequence[Path], check: FileCheck) -> dict[Path, str]:
        stored = read_json(self.path) if self.path.is_file() else {}
        if stored.get("environment") != _environment():
            stored = {"environment": _environment(), "results": {}}
        results = stored["results"].setdefault(check.__name__, {})
        stats = {path: _stat(path) for path in paths}
        todo = [path for path in paths if results.get(str(path), [None])[0] != stats[path]]
        found = check_files(todo, check)
        for path in todo:
            results[str(path)] = [stats[path], found.get(path)]
        if todo:
            write_json(self.path, stored)
        return {path: results[str(path)][1] for path in paths if results[str(path)][1] is not None}


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]
