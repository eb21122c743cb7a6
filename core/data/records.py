"""`CaptionSplit`: one split of an image-caption dataset in the layout every stage relies on."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BadEntry:
    """An image (with its captions) that a reader left out with `skip_bad`, and why."""

    index: int  # position in the source: `images[index]` of a Karpathy JSON
    filename: str
    reason: str


@dataclass(frozen=True)
class CaptionSplit:
    """Images (files or precomputed region features) with exactly `captions_per_image` captions each.

    Caption j belongs to image j // captions_per_image, the layout `eval.metrics` expects.
    """

    name: str
    source: str
    captions: tuple[str, ...]
    captions_per_image: int
    image_paths: tuple[Path, ...] | None = None
    features: np.ndarray | None = None  # (n_images, regions, dim), possibly memory-mapped
    skipped: tuple[BadEntry, ...] = ()  # bad entries left out (`skip_bad`): reported, never silent

    def __post_init__(self) -> None:
        if (self.image_paths is None) == (self.features is None):
            raise ValueError(f"{self.source}: a split holds either image paths or region features")
        if len(self.captions) != self.n_images * self.captions_per_image:
            raise ValueError(
                f"{self.source}: split '{self.name}' has {self.n_images} images but {len(self.captions)} "
                f"captions (expected {self.captions_per_image} per image)"
            )

    @property
    def n_images(self) -> int:
        return len(self.image_paths) if self.image_paths is not None else int(self.features.shape[0])

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def caption_image(self) -> np.ndarray:
        """Image index of every caption."""
        return np.arange(self.n_captions) // self.captions_per_image

    def head(self, n_images: int | None) -> "CaptionSplit":
        """The first `n_images` images and their captions (all when None)."""
        if n_images is None or n_images >= self.n_images:
            return self
        k = self.captions_per_image
        return CaptionSplit(
            name=self.name,
            source=self.source,
            captions=self.captions[: n_images * k],
            captions_per_image=k,
            image_paths=None if self.image_paths is None else self.image_paths[:n_images],
            features=None if self.features is None else self.features[:n_images],
            skipped=self.skipped,
        )

    def fingerprint(self) -> str:
        """Hash of what a score cache depends on: captions, image names and sizes, or feature samples."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.captions_per_image}|{self.n_images}".encode())
        for caption in self.captions:
            h.update(caption.encode("utf-8") + b"\0")
        if self.image_paths is not None:
            for path in self.image_paths:
                h.update(f"{path.name}|{os.path.getsize(path)}".encode() + b"\0")
        else:
            feats = self.features
            h.update(f"{feats.shape}|{feats.dtype}".encode())
            rows = np.unique(np.linspace(0, feats.shape[0] - 1, num=min(64, feats.shape[0])).astype(int))
            h.update(np.ascontiguousarray(feats[rows]).tobytes())
        return h.hexdigest()
