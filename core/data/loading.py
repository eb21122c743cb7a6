"""Torch datasets over a `CaptionSplit`: caption-level training pairs, galleries of images or captions."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from core.data.batching import LexicalBatches
from core.data.images import ImagePreprocess, load_image
from core.data.records import CaptionSplit

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


@dataclass
class Batch:
    """A batch of pairs (or of images only / captions only, the other fields left None).

    `images` holds pixels (B, 3, H, W) or region features (B, R, D) with `image_mask` (B, R).
    `image_index` / `caption_index` are positions in the split: losses use `image_index` to know
    which captions share an image, and distillation uses both to look up teacher scores.
    """

    images: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    caption_index: torch.Tensor | None = None
    # Outputs of frozen towers, looked up from a cache instead of recomputed (see core.towers.frozen).
    image_features: Any = None
    text_features: Any = None

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def __len__(self) -> int:
        ref = self.image_index if self.image_index is not None else self.caption_index
        return int(ref.shape[0])


def _move(value: Any, device: torch.device) -> Any:
    return None if value is None else value.to(device)


MEMORY_CACHE_BYTES = 1 << 30


class ImageSource:
    """Loads image `i` of a split as a tensor: preprocessed pixels, or region features.

    Decoded, preprocessed images are kept in memory when the whole split fits in
    MEMORY_CACHE_BYTES, so epochs after the first decode nothing (training visits each image
    once per caption).
    """

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None):
        if split.image_paths is not None and preprocess is None:
            raise ValueError(f"{split.source}: an image split needs an image preprocessing spec")
        self.split, self.preprocess = split, preprocess
        fits = preprocess is not None and split.n_images * 3 * preprocess.size ** 2 * 4 <= MEMORY_CACHE_BYTES
        self.cache: dict[int, torch.Tensor] | None = {} if fits else None

    def __call__(self, i: int) -> torch.Tensor:
        if self.split.features is not None:
            return torch.from_numpy(np.array(self.split.features[i], dtype=np.float32))  # copy out of the memmap
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        pixels = torch.from_numpy(self.preprocess(load_image(self.split.image_paths[i])))
        if self.cache is not None:
            self.cache[i] = pixels
        return pixels


class PairDataset(Dataset):
    """One item per caption: (image or None, caption text, image index, caption index)."""

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None, load_images: bool = True):
        self.split = split
        self.load = ImageSource(split, preprocess) if load_images else None

    def __len__(self) -> int:
        return self.split.n_captions

    def __getitem__(self, j: int) -> tuple[torch.Tensor | None, str, int, int]:
        i = j // self.split.captions_per_image
        return (self.load(i) if self.load else None), self.split.captions[j], i, j


class ImageGallery(Dataset):
    """One item per image, for encoding a gallery."""

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None):
        self.split, self.load = split, ImageSource(split, preprocess)

    def __len__(self) -> int:
        return self.split.n_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), i


def _stack_images(images: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if images[0] is None:  # a frozen image tower's outputs come from its cache
        return None, None
    stacked = torch.stack(images)
    if stacked.ndim == 3:  # region features: every region of a precomputed set is valid
        return stacked, torch.ones(stacked.shape[:2], dtype=torch.bool)
    return stacked, None


def pair_loader(split: CaptionSplit, preprocess: ImagePreprocess | None, tokenize: Tokenize,
                batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                num_workers: int = 0, batching: str = "random", group_size: int = 4, seed: int = 0,
                load_images: bool = True, shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """Caption-level pairs, tokenised by `tokenize`.

    `batching='random'` shuffles captions (`generator` fixes the order); `'lexical'` fills batches
    with groups of lexically close images (see `core.data.batching`), seeded by `seed`.
    `shard=(rank, world)` gives rank `rank` its slice of every batch (batch_size is the global batch).
    """

    def collate(items: list[tuple[torch.Tensor, str, int, int]]) -> Batch:
        images, texts, img_idx, cap_idx = zip(*items, strict=True)
        pixels, mask = _stack_images(list(images))
        tokens = tokenize(list(texts))
        return Batch(pixels, mask, tokens["input_ids"], tokens["attention_mask"],
                     torch.tensor(img_idx), torch.tensor(cap_idx))

    dataset = PairDataset(split, preprocess, load_images)
    if batching == "lexical":
        sampler = LexicalBatches(split.captions, split.captions_per_image, batch_size, group_size, seed)
    elif batching == "random":
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        sampler = BatchSampler(order, batch_size, drop_last=shuffle)
    else:
        raise ValueError(f"unknown batching {batching!r} (expected 'random' or 'lexical')")
    if shard[1] > 1:
        sampler = ShardedBatches(sampler, *shard)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)


def lexical_rng(loader: DataLoader) -> np.random.Generator | None:
    """The NumPy generator that orders a lexical loader's epochs; None for random batching, whose
    order comes from the torch generator given to `pair_loader`. A resumed run restores it."""
    sampler = loader.batch_sampler
    sampler = sampler.batches if isinstance(sampler, ShardedBatches) else sampler
    return sampler.rng if isinstance(sampler, LexicalBatches) else None


class ShardedBatches:
    """Rank r of w takes the r-th contiguous slice of every global batch, so that the ranks' slices,
    gathered in rank order, are the global batch a single process would see."""

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            per_rank = len(batch) // self.world
            yield list(batch[self.rank * per_rank:(self.rank + 1) * per_rank])


def image_loader(split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 num_workers: int = 0, rows: range | None = None) -> DataLoader:
    """The images of a split (`rows` of them, default all), in order."""

    def collate(items: list[tuple[torch.Tensor, int]]) -> Batch:
        images, idx = zip(*items, strict=True)
        pixels, mask = _stack_images(list(images))
        return Batch(images=pixels, image_mask=mask, image_index=torch.tensor(idx))

    gallery = ImageGallery(split, preprocess)
    dataset = gallery if rows is None else Subset(gallery, list(rows))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


def caption_batches(split: CaptionSplit, tokenize: Tokenize, batch_size: int, rows: range | None = None):
    """The captions of a split (`rows` of them, default all), in order, as tokenised batches."""
    rows = range(split.n_captions) if rows is None else rows
    for start in range(rows.start, rows.stop, batch_size):
        stop = min(rows.stop, start + batch_size)
        tokens = tokenize(list(split.captions[start:stop]))
        yield Batch(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    caption_index=torch.arange(start, stop))
