"""The uint8 image cache (`train.image_cache: uint8`): a split's images decoded, resized and cropped once.

Training visits every image once per caption (or once per epoch with `train.sampling: image`), and
decoding a JPEG and resizing it costs far more than the model step of a frozen or small tower on a GPU.
The cache holds what `ImagePreprocess.crop` returns, uint8 (N, size, size, 3) in one memory-mapped
`.npy` (150 KB an image at 224 px), so a read is a page-cache copy and only normalisation is left
(on the device, by the image tower): the pixels equal decoding + `ImagePreprocess.crop` exactly. Workers share it through the page cache instead of each holding a copy.

It lives under `run_dir/images/<key>/` (`core.run_layout.RunPaths.images`), keyed like the
frozen-tower caches: by the split's fingerprint and the crop geometry (size, resize, interpolation;
mean and std apply at load time) and whether JPEGs are draft-decoded. A directory whose manifest
does not equal the key, or whose array has another shape, is rebuilt, never read.
"""
from __future__ import annotations

import errno
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.data.images import ImagePreprocess, load_image
from core.data.records import CaptionSplit
from core.io import atomic_dir, read_json, read_npy, sha256_json, write_json
from core.progress import progress

log = logging.getLogger("itr_distill")
CACHE_VERSION = 1
PIXELS, MANIFEST = "pixels.npy", "manifest.json"
BLOCK = 64  # images decoded per task (a worker's unit of work) and written to the array at once


def cache_key(split: CaptionSplit, preprocess: ImagePreprocess, draft: bool) -> dict[str, Any]:
    """What the cached pixels depend on (as it reads back from the manifest)."""
    return json.loads(json.dumps({
        "kind": "uint8-images", "version": CACHE_VERSION, "split": split.fingerprint(), "n_images": split.n_images,
        "size": preprocess.size, "resize": preprocess.resize, "interpolation": preprocess.interpolation,
        "draft": draft}))


def draft_size(preprocess: ImagePreprocess) -> tuple[int, int]:
    """The JPEG draft request for `preprocess`: PIL keeps both sides at least this large, so the shorter
    side is never below the resize (nothing is upscaled that a full decode would have downscaled)."""
    side = max(preprocess.resize, preprocess.size)
    return side, side


def decode(path: str | Path, preprocess: ImagePreprocess, draft: bool) -> np.ndarray:
    """uint8 (size, size, 3) of one image file: what the dataset decodes and the cache stores."""
    return preprocess.crop(load_image(path, draft=draft_size(preprocess) if draft else None))


class CachedImages:
    """The crops of a cache, image i as `ImagePreprocess.crop` gave it. The array is opened on first use
    in each process, so a worker (forked or spawned) maps the file itself."""

    def __init__(self, directory: Path, build_s: float | None = None):
        self.directory = Path(directory)
        self.build_s = build_s  # seconds this process spent building it (None: it was there)
        self._pixels: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = read_npy(self.directory / PIXELS)
        return self._pixels

    def crop(self, i: int) -> np.ndarray:
        """uint8 (size, size, 3): image i as `ImagePreprocess.crop` gave it (a view of the mapped file)."""
        return self.pixels[i]


class _Crops(Dataset):
    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess, draft: bool):
        self.split, self.preprocess, self.draft = split, preprocess, draft

    def __len__(self) -> int:
        return self.split.n_images

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.split.image_paths[i], self.preprocess, self.draft)


def _stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items)


def _valid(directory: Path, key: dict[str, Any], preprocess: ImagePreprocess) -> bool:
    try:
        if read_json(directory / MANIFEST) != key:
            return False
        pixels = read_npy(directory / PIXELS)
    except (OSError, ValueError):
        return False
    return pixels.dtype == np.uint8 and pixels.shape == (key["n_images"], preprocess.size, preprocess.size, 3)


def _build(split: CaptionSplit, preprocess: ImagePreprocess, directory: Path, key: dict[str, Any], workers: int,
           block: int, show: bool) -> float:
    started = time.perf_counter()
    n, size = split.n_images, preprocess.size
    # a generator of its own: the loader would otherwise draw its worker seed from the global torch
    # generator, and a training that built the cache would then draw differently from one that found it
    blocks = DataLoader(_Crops(split, preprocess, key["draft"]), batch_size=block, num_workers=workers,
                        collate_fn=_stack, generator=torch.Generator())
    with atomic_dir(directory) as tmp:
        pixels = np.lib.format.open_memmap(tmp / PIXELS, "w+", np.uint8, (n, size, size, 3))
        start = 0
        for part in progress(blocks, f"uint8 image cache of {split.name} ({n} images, blocks of {block})", show):
            pixels[start:start + len(part)] = part
            start += len(part)
        pixels.flush()
        del pixels
        write_json(tmp / MANIFEST, key)  # last: a directory with a manifest is complete
    seconds = time.perf_counter() - started
    log.info("uint8 image cache of %s: %d images of %dx%d, %.2f GiB, built in %.1f s (%s)", split.name, n, size, size,
             n * size * size * 3 / 2**30, seconds, directory)
    return seconds


def image_cache(split: CaptionSplit, preprocess: ImagePreprocess, root: Path, draft: bool = False, workers: int = 0,
                build: bool = True, block: int = BLOCK, show: bool = True) -> CachedImages:
    """The uint8 cache of `split` under `root`, built first (decoding in `workers` processes) when missing
    or made from anything else; not `build`: a missing cache raises FileNotFoundError naming its manifest."""
    if split.image_paths is None:
        raise ValueError(f"{split.source}: the uint8 image cache is for image files, this split has features")
    key = cache_key(split, preprocess, draft)
    directory = Path(root) / sha256_json(key)[:20]
    if _valid(directory, key, preprocess):
        return CachedImages(directory)
    if not build:
        raise FileNotFoundError(errno.ENOENT, "no uint8 image cache", str(directory / MANIFEST))
    if directory.exists():
        log.info("uint8 image cache %s does not match this split and preprocessing: rebuilding it", directory)
    return CachedImages(directory, _build(split, preprocess, directory, key, workers, block, show))
