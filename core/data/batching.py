"""Batch orders: plain random, or lexical hard-negative groups.

In-batch losses only learn what the batch can contrast. With random batches, images whose
captions use the same words (the same objects, differently arranged) almost never meet, so no
loss ever asks a model to bind attributes or read relations. `lexical` batching fills each batch
with groups of images whose captions are lexically closest (cosine of hashed bag-of-words over
all their captions), so those hard negatives are in the batch. Every caption is still visited
exactly once per epoch (with `train.sampling: image`, every image once, with one of its captions).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


def hashed_bow(texts_per_item: Sequence[Sequence[str]], dim: int = 2048) -> np.ndarray:
    """L2-normalised hashed bag-of-words vectors, one per item (an image's captions together)."""
    out = np.zeros((len(texts_per_item), dim), dtype=np.float32)
    for i, texts in enumerate(texts_per_item):
        for text in texts:
            for word in _WORD.findall(text.lower()):
                out[i, zlib.crc32(word.encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


NEIGHBOUR_BLOCK_BYTES = 256 << 20  # a block of similarities with what is derived from it (16 bytes an entry)


def nearest_neighbours(vectors: np.ndarray, k: int, block_bytes: int = NEIGHBOUR_BLOCK_BYTES) -> np.ndarray:
    """(n, k) indices of each row's k most similar other rows (cosine), computed in blocks of rows
    sized so that a block's similarities take `block_bytes` whatever n (COCO: 141 rows of 113K)."""
    n = len(vectors)
    k = min(k, n - 1)
    block = max(1, block_bytes // (16 * max(1, n)))
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        sims = vectors[start:start + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k > 0 else np.empty((len(sims), 0), dtype=np.int64)
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start:start + block] = np.take_along_axis(part, order, axis=1)
    return out


def lexical_caption_order(neighbours: np.ndarray, captions_per_image: int, group_size: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Caption indices for one epoch, in groups of lexically close images.

    In each of `captions_per_image` rounds every image appears once, with a caption not yet used
    this epoch; groups are a random seed image plus its nearest neighbours still unused in the round.
    """
    n_img = len(neighbours)
    caption_perm = np.stack([rng.permutation(captions_per_image) for _ in range(n_img)])
    order: list[int] = []
    for rnd in range(captions_per_image):
        order.extend(i * captions_per_image + int(caption_perm[i, rnd]) for i in _lexical_round(neighbours, group_size, rng))
    return np.asarray(order, dtype=np.int64)


def lexical_image_order(neighbours: np.ndarray, captions_per_image: int, group_size: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Caption indices for one image-level epoch (`train.sampling: image`): every image once, in groups
    of lexically close images as in one round of `lexical_caption_order`, each with one caption drawn
    at random."""
    caption = rng.integers(captions_per_image, size=len(neighbours))
    return np.asarray([i * captions_per_image + int(caption[i]) for i in _lexical_round(neighbours, group_size, rng)],
                      dtype=np.int64)


def _lexical_round(neighbours: np.ndarray, group_size: int, rng: np.random.Generator) -> list[int]:
    """Every image once: groups of a random seed image and its nearest neighbours still unused, in random order."""
    n_img = len(neighbours)
    used = np.zeros(n_img, dtype=bool)
    groups: list[list[int]] = []
    for seed in rng.permutation(n_img):
        if used[seed]:
            continue
        group = [int(seed)]
        used[seed] = True
        for nb in neighbours[seed]:
            if len(group) == group_size:
                break
            if not used[nb]:
                group.append(int(nb))
                used[nb] = True
        groups.append(group)
    return [i for g in rng.permutation(len(groups)) for i in groups[g]]


class LexicalBatches:
    """Batch sampler (an iterable of caption-index lists) for lexical hard-negative batching; `per_image`:
    image-level epochs (`lexical_image_order`)."""

    def __init__(self, captions: Sequence[str], captions_per_image: int, batch_size: int, group_size: int,
                 seed: int, per_image: bool = False):
        k = captions_per_image
        per_image_captions = [captions[i:i + k] for i in range(0, len(captions), k)]
        self.neighbours = nearest_neighbours(hashed_bow(per_image_captions), group_size - 1)
        self.k, self.batch_size, self.group_size, self.per_image = k, batch_size, group_size, per_image
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return (len(self.neighbours) * (1 if self.per_image else self.k)) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch_order = lexical_image_order if self.per_image else lexical_caption_order
        order = epoch_order(self.neighbours, self.k, self.group_size, self.rng)
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()

