"""Frozen-tower fast path: a frozen tower's outputs for a whole split, computed once, kept on disk.

When a tower does not train, its tokens for a given input never change, so recomputing them every
epoch (and for every model that shares the tower) is wasted work; on a CPU it is most of the work.
The outputs are stored as float16 memory-mapped arrays under a key made of the tower's weights,
its input processing and the split's fingerprint, so the teacher and every student that freeze the
same pretrained tower share one cache, and a changed tower or dataset never reuses a stale one.

Under torchrun one process builds a missing cache while the others wait (`distill.stages.frozen_shared`):
rank 0 into the run directory's `features/`, or with $ITR_DISTILL_NODE_FEATURES set, each
machine's local rank 0 into that directory on its own disk.
"""
from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from core.data.images import ImagePreprocess
from core.data.loading import caption_batches, image_loader
from core.data.records import CaptionSplit
from core.io import atomic_dir, keyed_dir, read_npy, sha256_json, write_json
from core.progress import progress
from core.towers.image import TokenOutput

NODE_FEATURES = "ITR_DISTILL_NODE_FEATURES"  # a node-local directory for the caches every torchrun rank reads


def cacheable(tower: nn.Module) -> bool:
    """Whether a tower's trunk (the whole tower unless `train_top` cuts it) has weights and none train."""
    params = [p for m in tower.trunk_modules() for p in m.parameters()]
    return bool(params) and not any(p.requires_grad for p in params)


def weights_fingerprint(module: nn.Module) -> str:
    """Hash of every tensor of a module's state (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trunk_key(tower: nn.Module) -> dict:
    """What a cached trunk output depends on: the trunk's weights and where the tower is cut."""
    return {"weights": weights_fingerprint(nn.ModuleList(tower.trunk_modules())),
            "top": len(tower.top_modules())}


@dataclass
class FrozenOutputs:
    """Per-item tower outputs of a split: tokens (N, T, C) and pooled (N, C) float16, mask (N, T)."""

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray

    def take(self, index: torch.Tensor, device: torch.device | str = "cpu") -> TokenOutput:
        """The outputs of items `index`, trimmed to their longest valid token run, as float32."""
        idx = index.cpu().numpy()
        mask = np.asarray(self.mask[idx])
        width = int(np.flatnonzero(mask.any(axis=0)).max()) + 1
        return TokenOutput(
            tokens=torch.from_numpy(np.asarray(self.tokens[idx, :width], dtype=np.float32)).to(device),
            mask=torch.from_numpy(mask[:, :width]).to(device),
            pooled=torch.from_numpy(np.asarray(self.pooled[idx], dtype=np.float32)).to(device),
        )


SORT_WINDOW = 64  # caption batches sorted by length together when a text cache is built


def _compute(outputs: Iterable[tuple[torch.Tensor, TokenOutput]], n: int, directory: Path, key: dict) -> None:
    """Write (rows, outputs of those rows) pairs, in any row order, into a new cache directory."""
    tokens = mask = pooled = None
    with atomic_dir(directory) as tmp:
        for rows, out in outputs:
            _, t, c = out.tokens.shape
            if tokens is None:
                width = t if key["kind"] == "image" else key["max_length"]
                tokens = np.lib.format.open_memmap(tmp / "tokens.npy", "w+", np.float16, (n, width, c))
                mask = np.lib.format.open_memmap(tmp / "mask.npy", "w+", np.bool_, (n, width))
                pooled = np.lib.format.open_memmap(tmp / "pooled.npy", "w+", np.float16, (n, out.pooled.shape[1]))
                mask[:] = False
                tokens[:] = 0
            rows = rows.cpu().numpy()
            tokens[rows, :t] = out.tokens.float().cpu().numpy()
            mask[rows, :t] = out.mask.cpu().numpy()
            pooled[rows] = out.pooled.float().cpu().numpy()
        for arr in (tokens, mask, pooled):
            arr.flush()
        del tokens, mask, pooled
        write_json(tmp / "manifest.json", key)


def _open(directory: Path) -> FrozenOutputs:
    def load(name: str) -> np.ndarray:
        return read_npy(directory / name)

    return FrozenOutputs(load("tokens.npy"), load("mask.npy"), load("pooled.npy"))


def _cached(root: Path, key: dict, compute) -> FrozenOutputs:
    directory, key, fresh = keyed_dir(root, key)
    if not fresh:
        if compute is None:
            raise FileNotFoundError(errno.ENOENT, "no frozen-tower cache", str(directory / "manifest.json"))
        compute(directory)
    return _open(directory)


@torch.no_grad()
def frozen_image_outputs(tower: nn.Module, split: CaptionSplit, preprocess: ImagePreprocess | None, root: Path,
                         batch_size: int, device: torch.device, build: bool = True) -> FrozenOutputs:
    """Image-trunk outputs for every image of `split` (cached under `root`; not `build`: a missing
    cache raises FileNotFoundError naming its manifest)."""
    key = {"kind": "image", **trunk_key(tower), "split": split.fingerprint(),
           "preprocess": None if preprocess is None else preprocess.to_dict()}
    tower.eval()

    def run(directory: Path) -> None:
        batches = progress(image_loader(split, preprocess, batch_size), "frozen image tower")
        outs = ((b.image_index, tower.trunk(b.images.to(device), None if b.image_mask is None else b.image_mask.to(device)))
                for b in batches)
        _compute(outs, split.n_images, directory, key)

    return _cached(root, key, run if build else None)


@torch.no_grad()
def frozen_text_outputs(tower: nn.Module, split: CaptionSplit, root: Path, batch_size: int,
                        device: torch.device, build: bool = True) -> FrozenOutputs:
    """Text-trunk outputs for every caption of `split` (cached under `root`; `build` as for images)."""
    key = {"kind": "text", **trunk_key(tower), "split": split.fingerprint(),
           "max_length": tower.max_length,
           "tokenizer": sha256_json(sorted(tower.tokenizer.get_vocab().items()))}
    tower.eval()

    def run(directory: Path) -> None:
        batches = progress(caption_batches(split, tower.tokenize, batch_size, sort_window=SORT_WINDOW),
                           "frozen text tower", total=-(-split.n_captions // batch_size))
        outs = ((b.caption_index, tower.trunk(b.input_ids.to(device), b.attention_mask.to(device))) for b in batches)
        _compute(outs, split.n_captions, directory, key)

    return _cached(root, key, run if build else None)


Frozen = tuple["FrozenOutputs | None", "FrozenOutputs | None"]
NOT_FROZEN: Frozen = (None, None)


def split_outputs(model: nn.Module, split: CaptionSplit, side: str, preprocess: ImagePreprocess | None,
                  batch_size: int, device: torch.device, frozen: FrozenOutputs | None = None,
                  show: bool = True, rows: range | None = None) -> Iterable[TokenOutput]:
    """Tower outputs for the images (side='image') or captions (side='text') of a split (`rows` of
    them, default all), in order: the tower's top over the trunk outputs in `frozen` when given, else
    computed by the model's tower."""
    rows = range(split.n_images if side == "image" else split.n_captions) if rows is None else rows
    if frozen is not None:
        tower = model.image_tower if side == "image" else model.text_tower
        for index in progress(torch.arange(rows.start, rows.stop).split(batch_size), f"cached {side} outputs", show):
            yield tower.top(frozen.take(index, device))
    elif side == "image":
        for b in progress(image_loader(split, preprocess, batch_size, rows=rows), "encode images", show):
            yield model.image_tower(b.images.to(device), None if b.image_mask is None else b.image_mask.to(device))
    else:
        batches = caption_batches(split, model.tokenize, batch_size, rows)
        for b in progress(batches, "encode captions", show, total=-(-len(rows) // batch_size)):
            yield model.text_tower(b.input_ids.to(device), b.attention_mask.to(device))


def frozen_for(model: nn.Module, split: CaptionSplit, root: Path, batch_size: int, device: torch.device,
               build: bool = True) -> Frozen:
    """Cached trunk outputs of whichever towers of a two-tower model have a frozen trunk, for `split`
    (the trunk is the whole tower unless `train_top` cuts it). A tower with
    no weights (precomputed region features) has nothing to cache: its inputs are read as they are,
    from the memory-mapped feature files, instead of being copied (4.3 GB for Flickr30K). Not `build`:
    a missing cache raises FileNotFoundError instead of being computed."""
    image = text = None
    if cacheable(model.image_tower):
        image = frozen_image_outputs(model.image_tower, split, model.image_tower.preprocess(), root, batch_size, device,
                                     build)
    if cacheable(model.text_tower):
        text = frozen_text_outputs(model.text_tower, split, root, batch_size, device, build)
    return image, text
