"""The teacher's token store: its projected, L2-normalised tokens (and global vectors) of every image
and caption of a split, computed once and memory-mapped.

Every scorer reads it instead of holding a split's tokens: online KD gathers the batch's rows, the
all-pairs and top-K caches and the evaluation read it in blocks. Encoding once costs one forward pass
of the split; projecting the frozen towers' outputs through the teacher's heads at every step instead
would repeat the region projection (R x C x D per image) once per caption, five times per epoch, and
would not work at all for a teacher whose text tower trains. float16 halves the store (Flickr30K with
D = 256: 0.5 GB of region tokens and 2.4 GB of word tokens); scores read from it differ from float32
ones by about 1e-3 (README, "Flickr30K and COCO").

Layout of a store directory (`<run_dir>/teacher_tokens/<split>/`):
  images_tokens.npy (n_images, R, D), images_mask.npy (n_images, R) bool, images_pooled.npy (n_images, D)
  captions_tokens.npy (n_captions, L, D), captions_mask.npy, captions_pooled.npy
  manifest.json: format, split, shape, teacher checkpoint hash, dataset fingerprint, dtype
(pooled arrays only when the teacher has a global term). Under torchrun every rank encodes its
share of the blocks into the same files, and rank 0 moves the finished store into place.
"""
from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.distributed import Ranks, shared_file
from core.io import atomic_dir, read_json, read_npy, write_json
from core.progress import progress as bar
from core.towers.frozen import NOT_FROZEN, Frozen, split_outputs
from teacher.cache import MANIFEST, ScoreCacheMismatch, mismatches
from teacher.model import EncodedSide, ScanTeacher

FORMAT = "itr-distill/teacher-tokens/v1"
SIDES = ("images", "captions")


def token_identity(teacher_sha256: str, dataset_fingerprint: str, split: str, n_images: int, n_captions: int,
                   dtype: str) -> dict[str, Any]:
    """The manifest fields a run checks before it reads a token store."""
    return {"format": FORMAT, "split": split, "teacher_checkpoint_sha256": teacher_sha256,
            "dataset_fingerprint": dataset_fingerprint, "shape": [n_images, n_captions], "dtype": dtype}


def _ids(idx: Any) -> Any:
    return idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx


@dataclass
class StoredSide:
    """One side of a store, indexable like an `EncodedSide`: `side[ids]` reads those rows (any index
    shape), trims padding columns no row uses, and returns float32 tensors on `device`."""

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray | None
    device: torch.device

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])

    def __getitem__(self, idx: Any) -> EncodedSide:
        ids = _ids(idx)
        mask = np.asarray(self.mask[ids])
        used = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))
        width = int(used.max()) + 1 if used.size else 1
        tokens = np.asarray(self.tokens[ids, :width])  # only the columns some row uses

        def tensor(a: np.ndarray) -> torch.Tensor:
            """On the device in the stored dtype, then float32: torch converts float16 faster than numpy on
            a CPU (top-K scoring gathers R x D tokens per candidate), and a GPU receives half the bytes."""
            out = torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device)
            return out.float() if out.is_floating_point() else out

        pooled = None if self.pooled is None else tensor(np.asarray(self.pooled[ids]))
        return EncodedSide(tensor(tokens), tensor(mask[..., :width]), pooled)

    def bytes_per_row(self) -> int:
        """float32 bytes of one row's tokens once read: what a scoring block holds."""
        return self.width * int(self.tokens.shape[2]) * 4


@dataclass
class TokenStore:
    images: StoredSide
    captions: StoredSide


def open_token_store(directory: str | Path, expected: dict[str, Any], device: torch.device | str = "cpu") -> TokenStore:
    """Memory-map a store whose manifest matches `expected`, else raise ScoreCacheMismatch naming what differs."""
    directory = Path(directory)
    diffs = mismatches(read_json(directory / MANIFEST), expected)
    if diffs:
        raise ScoreCacheMismatch(f"{directory}: teacher token store does not match this run; it is rebuilt by "
                                 "`itr-distill teacher tokens`.\n  " + "\n  ".join(diffs))
    sides = []
    for side, rows in zip(SIDES, expected["shape"], strict=True):
        tokens, mask = read_npy(directory / f"{side}_tokens.npy"), read_npy(directory / f"{side}_mask.npy")
        pooled = read_npy(directory / f"{side}_pooled.npy") if (directory / f"{side}_pooled.npy").is_file() else None
        if len(tokens) != rows or mask.shape != tokens.shape[:2]:
            raise ScoreCacheMismatch(f"{directory / f'{side}_tokens.npy'}: shape {tokens.shape} (mask {mask.shape}), "
                                     f"its manifest needs {rows} rows")
        sides.append(StoredSide(tokens, mask, pooled, torch.device(device)))
    return TokenStore(*sides)


@torch.no_grad()
def build_token_store(teacher: ScanTeacher, split: CaptionSplit, directory: str | Path, identity: dict[str, Any],
                      preprocess: ImagePreprocess | None, batch_size: int, device: torch.device,
                      frozen: Frozen = NOT_FROZEN, ranks: Ranks = Ranks(), progress: bool = True,
                      block_rows: int = 4096) -> Path:
    """Encode every image and caption of `split` with the teacher into a store at `directory`.

    Memory stays at one batch of tower outputs: rows go straight into memory-mapped files. Each
    rank encodes every world-th block of `block_rows` items; rank 0 creates the files first and
    swaps the finished store in atomically (an earlier store stays whole until then)."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    teacher.eval()
    dtype = np.dtype(identity["dtype"])
    first = next(iter(split_outputs(teacher, split, "image", preprocess, 1, device, frozen[0], False, range(1))))
    widths = {"images": int(first.tokens.shape[1]), "captions": teacher.text_tower.max_length}
    rows = {"images": split.n_images, "captions": split.n_captions}
    dim, pooled = teacher.cfg.embed_dim, teacher.cfg.global_weight > 0
    if ranks.is_main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        for side in SIDES:
            np.lib.format.open_memmap(partial / f"{side}_tokens.npy", "w+", dtype, (rows[side], widths[side], dim))
            np.lib.format.open_memmap(partial / f"{side}_mask.npy", "w+", np.bool_, (rows[side], widths[side]))
            if pooled:
                np.lib.format.open_memmap(partial / f"{side}_pooled.npy", "w+", dtype, (rows[side], dim))
    ranks.barrier()
    for side, tower_side, index in (("images", "image", 0), ("captions", "text", 1)):
        arrays = {what: np.load(shared_file(partial / f"{side}_{what}.npy", ranks), mmap_mode="r+")
                  for what in ("tokens", "mask", "pooled") if what != "pooled" or pooled}
        encode = teacher.images_from if side == "images" else teacher.captions_from
        blocks = ranks.mine([range(s, min(rows[side], s + block_rows)) for s in range(0, rows[side], block_rows)])
        for block in bar(blocks, f"teacher token store: {side} (rank {ranks.rank})", progress):
            start = block.start
            for out in split_outputs(teacher, split, tower_side, preprocess, batch_size, device, frozen[index], False,
                                     block):
                enc = encode(out)
                n, width = enc.tokens.shape[:2]
                # padded positions are stored as zeros: the store does not depend on how items were batched
                arrays["tokens"][start:start + n, :width] = (enc.tokens * enc.mask[..., None]).float().cpu().numpy()
                arrays["mask"][start:start + n, :width] = enc.mask.cpu().numpy()
                if pooled:
                    arrays["pooled"][start:start + n] = enc.pooled.float().cpu().numpy()
                start += n
        for array in arrays.values():
            array.flush()
        del arrays
    ranks.barrier()
    if ranks.is_main:
        with atomic_dir(directory) as tmp:
            for path in partial.iterdir():
                path.replace(tmp / path.name)
            write_json(tmp / MANIFEST, {**identity, "widths": widths, "embed_dim": dim,
                                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        shutil.rmtree(partial)
    ranks.barrier()
    return shared_file(directory / MANIFEST, ranks).parent


def store_bytes(n_images: int, n_captions: int, image_tokens: int, caption_tokens: int, dim: int, dtype: str,
                pooled: bool) -> int:
    """Disk size of a store: what the plan reserves for it."""
    item = np.dtype(dtype).itemsize
    per_image = image_tokens * (dim * item + 1) + (dim * item if pooled else 0)
    per_caption = caption_tokens * (dim * item + 1) + (dim * item if pooled else 0)
    return n_images * per_image + n_captions * per_caption
