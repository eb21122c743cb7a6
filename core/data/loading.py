"""Torch datasets over a `CaptionSplit`: caption-level training pairs, galleries of images or captions.

The training loader (`pair_loader`) may run its dataset and collation in DataLoader workers: a batch's
content depends only on the indices the batch sampler gives it (the sampler, with every random draw of
the data order, runs in the main process), so 0 and N workers give the same batches, and the generator
a checkpoint saves restores the order. Anything random added to the dataset itself must be drawn
from the item's index and the epoch, never from a worker's own generator.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    default_collate,
    get_worker_info,
)

from core.config import TrainConfig
from core.data.batching import LexicalBatches
from core.data.image_cache import CachedImages, decode
from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.length_groups import extents

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


@dataclass
class Batch:
    """A batch of pairs (or of images only / captions only, the other fields left None).

    `images` holds pixels, normalised float (B, 3, H, W) or, from the training loader, the uint8 crops
    (B, H, W, 3) that the image tower normalises, or region features (B, R, D) with `image_mask` (B, R).
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

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        """The batch on `device`; `non_blocking` copies from pinned memory overlap with the GPU's work."""
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory (the DataLoader's `pin_memory` calls this), so that its copy
        to a GPU can run asynchronously."""
        return Batch(**{f.name: _pinned(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        ref = self.image_index if self.image_index is not None else self.caption_index
        return int(ref.shape[0])


def _move(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    return None if value is None else value.to(device)


def _pinned(value: Any) -> Any:
    return value.pin_memory() if isinstance(value, torch.Tensor) else value


MEMORY_CACHE_BYTES = 1 << 30


class ImageSource:
    """Loads image `i` of a split as a tensor: preprocessed pixels, or region features.

    Pixels come from the uint8 image cache when one is given (`cached`), else from decoding the file
    (`draft`: JPEGs at a reduced scale, see `core.data.image_cache.draft_size`). With `in_memory`,
    decoded crops (uint8) are also kept in memory when the whole split's crops fit in MEMORY_CACHE_BYTES,
    so epochs after the first decode nothing (training visits each image once per caption); a loader
    with workers turns it off, each worker would hold its own copy (the uint8 cache is shared instead).
    """

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None, draft: bool = False,
                 cached: CachedImages | None = None, in_memory: bool = True):
        if split.image_paths is not None and preprocess is None:
            raise ValueError(f"{split.source}: an image split needs an image preprocessing spec")
        self.split, self.preprocess, self.draft, self.cached = split, preprocess, draft, cached
        fits = in_memory and cached is None and preprocess is not None and \
            split.n_images * 3 * preprocess.size ** 2 <= MEMORY_CACHE_BYTES
        self.cache: dict[int, np.ndarray] | None = {} if fits else None

    def __call__(self, i: int) -> torch.Tensor:
        item = self.item(i)
        return torch.from_numpy(self.preprocess.normalise(item)) if isinstance(item, np.ndarray) else item

    def item(self, i: int) -> torch.Tensor | np.ndarray:
        """Region features (float32 tensor), or the uint8 crop (size, size, 3), which a training batch
        ships as it is (`PairCollate`)."""
        if self.split.features is not None:
            return torch.from_numpy(np.array(self.split.features[i], dtype=np.float32))  # copy out of the memmap
        if self.cached is not None:
            return self.cached.crop(i)
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        crop = decode(self.split.image_paths[i], self.preprocess, self.draft)
        if self.cache is not None:
            self.cache[i] = crop
        return crop


class PairDataset(Dataset):
    """One item per caption: (image or None, caption text, image index, caption index)."""

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None, load_images: bool = True,
                 source: ImageSource | None = None):
        self.split = split
        self.load = (source or ImageSource(split, preprocess)) if load_images else None

    def __len__(self) -> int:
        return self.split.n_captions

    def __getitem__(self, j: int) -> tuple[torch.Tensor | np.ndarray | None, str, int, int]:
        """(features or the uint8 crop, see `ImageSource.item`, or None; caption; image index; caption index)."""
        i = j // self.split.captions_per_image
        return (self.load.item(i) if self.load else None), self.split.captions[j], i, j


class ImageGallery(Dataset):
    """One item per image, for encoding a gallery."""

    def __init__(self, split: CaptionSplit, preprocess: ImagePreprocess | None):
        self.split, self.load = split, ImageSource(split, preprocess)

    def __len__(self) -> int:
        return self.split.n_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), i


def _stack_images(images: list[torch.Tensor | np.ndarray | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if images[0] is None:  # a frozen image tower's outputs come from its cache
        return None, None
    if isinstance(images[0], np.ndarray):  # uint8 crops, perhaps read-only views of the mapped cache
        out = _batch_memory((len(images), *images[0].shape), torch.uint8)
        np.stack(images, out=out.numpy())
        return out, None
    stacked = default_collate(images)  # in a worker: stacked straight into shared memory, not copied there after
    if stacked.ndim == 3:  # region features: every region of a precomputed set is valid
        return stacked, torch.ones(stacked.shape[:2], dtype=torch.bool)
    return stacked, None


def _batch_memory(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch; in a DataLoader worker, in shared memory (as torch's default_collate allocates
    it), so that sending it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class PairCollate:
    """Stacks a batch's images and tokenises its captions (a class, not a closure: a worker started by
    spawn receives it pickled). Pixels stay the uint8 crops (B, size, size, 3): a quarter of the bytes
    of float32 to stack, send from a worker and copy to the device, where the image tower normalises
    them (`core.towers.image.normalise_crops`)."""

    def __init__(self, tokenize: Tokenize):
        self.tokenize = tokenize

    def __call__(self, items: list[tuple[torch.Tensor | np.ndarray | None, str, int, int]]) -> Batch:
        images, texts, img_idx, cap_idx = zip(*items, strict=True)
        pixels, mask = _stack_images(list(images))
        tokens = self.tokenize(list(texts))
        return Batch(pixels, mask, tokens["input_ids"], tokens["attention_mask"],
                     torch.tensor(img_idx), torch.tensor(cap_idx))


class ImageBatches:
    """Batch sampler of image-level epochs with random batches (`sampling='image'`): every image once per
    epoch in an order drawn from `generator` (the data-order generator a checkpoint saves), each with one
    of its captions, drawn from it too; batches of caption indices, the incomplete last one dropped. Not
    `shuffle`: the images in order with their first captions, every batch kept."""

    def __init__(self, n_images: int, captions_per_image: int, batch_size: int, generator: torch.Generator | None,
                 shuffle: bool = True):
        self.n, self.k, self.batch_size = n_images, captions_per_image, batch_size
        self.generator, self.shuffle = generator, shuffle

    def __len__(self) -> int:
        return self.n // self.batch_size if self.shuffle else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            images = torch.randperm(self.n, generator=self.generator)
            captions = torch.randint(self.k, (self.n,), generator=self.generator)
        else:
            images, captions = torch.arange(self.n), torch.zeros(self.n, dtype=torch.long)
        order = (images * self.k + captions[images]).tolist()
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def pair_loader(split: CaptionSplit, preprocess: ImagePreprocess | None, tokenize: Tokenize,
                batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                num_workers: int = 0, batching: str = "random", group_size: int = 4, seed: int = 0,
                load_images: bool = True, shard: tuple[int, int] = (0, 1), sampling: str = "caption",
                draft: bool = False, cached: CachedImages | None = None, pin_memory: bool = False,
                prefetch_factor: int = 2, memory_cache: bool = True) -> DataLoader:
    """Caption-level pairs, tokenised by `tokenize`.

    `batching='random'` shuffles (`generator` fixes the order); `'lexical'` fills batches with groups
    of lexically close images (see `core.data.batching`), seeded by `seed`. `sampling='caption'`:
    an epoch visits every caption once; `'image'`: every image once, with one of its captions (so each
    image is decoded once per epoch and a batch never holds two captions of one image).
    `shard=(rank, world)` gives rank `rank` its slice of every batch (batch_size is the global batch).
    Images come from the uint8 cache `cached` when given, else are decoded (`draft`: see ImageSource).
    `num_workers` processes load and collate batches (persistent over epochs, `prefetch_factor`
    batches ahead each); `pin_memory` (for a CUDA device) lets `Batch.to(..., non_blocking=True)` overlap.
    `memory_cache`: keep a small split's decoded crops in memory (without workers; see ImageSource).
    """
    if sampling not in ("caption", "image"):
        raise ValueError(f"unknown sampling {sampling!r} (expected 'caption' or 'image')")
    source = ImageSource(split, preprocess, draft, cached, in_memory=memory_cache and num_workers == 0) \
        if load_images else None
    dataset = PairDataset(split, preprocess, load_images, source)
    per_image = sampling == "image"
    if batching == "lexical":
        sampler = LexicalBatches(split.captions, split.captions_per_image, batch_size, group_size, seed, per_image)
    elif batching == "random" and per_image:
        sampler = ImageBatches(split.n_images, split.captions_per_image, batch_size, generator, shuffle)
    elif batching == "random":
        order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        sampler = BatchSampler(order, batch_size, drop_last=shuffle)
    else:
        raise ValueError(f"unknown batching {batching!r} (expected 'random' or 'lexical')")
    if shard[1] > 1:
        sampler = ShardedBatches(sampler, *shard)
    workers = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    # The loader's own generator only seeds its workers: without it each epoch's iterator would draw
    # that seed from the global torch generator (dropout's), once per epoch without persistent workers
    # but once per run with them, so the worker count would change the training's random draws.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=PairCollate(tokenize), num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **workers)


def training_loader(split: CaptionSplit, preprocess: ImagePreprocess | None, tokenize: Tokenize,
                    settings: TrainConfig, seed: int, generator: torch.Generator, device: torch.device,
                    load_images: bool = True, shard: tuple[int, int] = (0, 1),
                    cached: CachedImages | None = None, memory_cache: bool = True) -> DataLoader:
    """`pair_loader` as `settings` configure training (batch size, order, sampling, workers, draft
    decoding; pinned memory for a CUDA `device`): what `distill.loop.fit` trains on and `itr-distill
    bench input` times. Workers start only when the loader reads images or region features: captions
    alone tokenise faster than a worker's round trip."""
    return pair_loader(split, preprocess, tokenize, settings.batch_size, generator=generator,
                       batching=settings.batching, group_size=settings.group_size, seed=seed,
                       load_images=load_images, shard=shard, sampling=settings.sampling, draft=settings.jpeg_draft,
                       cached=cached, num_workers=settings.workers() if load_images else 0,
                       pin_memory=device.type == "cuda", prefetch_factor=settings.prefetch_factor,
                       memory_cache=memory_cache)


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


def caption_batches(split: CaptionSplit, tokenize: Tokenize, batch_size: int, rows: range | None = None,
                    sort_window: int = 0) -> Iterator[Batch]:
    """The captions of a split (`rows` of them, default all) as tokenised batches, in order; each batch is
    padded to its longest caption. With `sort_window` > 0, the captions of each run of `sort_window` batches
    are sorted by length first, so a batch pads only to a length its captions share (Flickr8k with MiniLM:
    14.3 tokens on average, the longest of a random batch of 128 about 28, so a layer over in-order batches
    does about twice the work), while memory stays one window. `caption_index` says which captions a batch holds."""
    rows = range(split.n_captions) if rows is None else rows
    step = batch_size * max(1, sort_window)
    for start in range(rows.start, rows.stop, step):
        stop = min(rows.stop, start + step)
        tokens = tokenize(list(split.captions[start:stop]))
        ids, mask, index = tokens["input_ids"], tokens["attention_mask"], torch.arange(start, stop)
        if sort_window:
            order = torch.argsort(extents(mask), descending=True, stable=True)
            ids, mask, index = ids[order], mask[order], index[order]
        for s in range(0, len(index), batch_size):
            width = max(1, int(extents(mask[s:s + batch_size]).max()))
            yield Batch(input_ids=ids[s:s + batch_size, :width], attention_mask=mask[s:s + batch_size, :width],
                        caption_index=index[s:s + batch_size])
