"""Scoring a split with the teacher: every image-caption pair, or each query's candidates."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.precision import autocast
from core.progress import progress as bar
from core.towers.frozen import NOT_FROZEN, Frozen, FrozenOutputs, split_outputs
from teacher.ensemble import EnsembleSide, EnsembleTeacher
from teacher.model import EncodedSide, ScanTeacher
from teacher.tokens import StoredSide

Side = EncodedSide | StoredSide | EnsembleSide  # what a scorer reads: encoded tokens, a token store, an ensemble's
Teacher = ScanTeacher | EnsembleTeacher


def _pad_cat(sides: list[EncodedSide]) -> EncodedSide:
    """Concatenate encoded batches whose token counts differ (captions padded per batch)."""
    width = max(s.tokens.shape[1] for s in sides)
    tokens = torch.cat([torch.nn.functional.pad(s.tokens, (0, 0, 0, width - s.tokens.shape[1])) for s in sides])
    mask = torch.cat([torch.nn.functional.pad(s.mask, (0, width - s.mask.shape[1])) for s in sides])
    pooled = None if sides[0].pooled is None else torch.cat([s.pooled for s in sides])
    return EncodedSide(tokens, mask, pooled)


@torch.no_grad()
def encode_split(teacher: ScanTeacher, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> tuple[EncodedSide, EncodedSide]:
    """The teacher's token features for every image and every caption of a split."""
    return (_encode_side(teacher, split, "image", preprocess, batch_size, device, progress, frozen[0]),
            _encode_side(teacher, split, "text", preprocess, batch_size, device, progress, frozen[1]))


def _encode_side(teacher: ScanTeacher, split: CaptionSplit, side: str, preprocess: ImagePreprocess | None,
                 batch_size: int, device: torch.device, progress: bool, frozen: FrozenOutputs | None) -> EncodedSide:
    """One side of `encode_split`, in eval mode (the teacher's mode is restored after)."""
    was_training = teacher.training
    teacher.eval()
    encode = teacher.images_from if side == "image" else teacher.captions_from
    out = _pad_cat([encode(o) for o in split_outputs(teacher, split, side, preprocess, batch_size, device, frozen, progress)])
    teacher.train(was_training)
    return out


@torch.no_grad()
def encode_gallery(teacher: Teacher, split: CaptionSplit, batch_size: int, device: torch.device) -> EncodedSide | EnsembleSide:
    """The teacher's side of every image of a split, what a query is scored against: an ensemble's is each
    member's, through its own image tower and preprocessing."""
    if isinstance(teacher, EnsembleTeacher):
        return EnsembleSide([encode_gallery(m, split, batch_size, device) for m in teacher.members])
    return _encode_side(teacher, split, "image", teacher.image_tower.preprocess(), batch_size, device, False, None)


def block_rows(images: Side, captions: Side, block_gib: float) -> tuple[int, int]:
    """(images, captions) per scoring block: each side's tokens take half of `block_gib`."""
    half = block_gib * 2**30 / 2
    return (max(1, min(len(images), int(half // images.bytes_per_row()))),
            max(1, min(len(captions), int(half // captions.bytes_per_row()))))


@torch.no_grad()
def score_all(teacher: Teacher, images: Side, captions: Side,
              block_gib: float = 0.5, progress: bool = True, bf16: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """(n_img, n_cap) float32 teacher scores of every pair, into `out` (e.g. a memory-mapped file) or a new array.

    Tokens are read in blocks of at most `block_gib` (a block of captions, then every block of images
    against it), so memory does not grow with the split; every block is checked to be finite as it is
    written, so no second array of the matrix's shape is needed for the check."""
    n_img, n_cap = len(images), len(captions)
    out = np.empty((n_img, n_cap), dtype=np.float32) if out is None else out
    img_rows, cap_rows = block_rows(images, captions, block_gib)
    blocks = [(c, i) for c in range(0, n_cap, cap_rows) for i in range(0, n_img, img_rows)]
    with autocast(images.device, bf16):
        caption_block, held = None, -1
        for c, i in bar(blocks, "teacher scoring", progress):
            if c != held:
                caption_block, held = captions[c:c + cap_rows], c
            scores = teacher.score(images[i:i + img_rows], caption_block).float().cpu().numpy()
            if not np.isfinite(scores).all():
                raise FloatingPointError(f"teacher scores of images {i}.. x captions {c}.. are not all finite")
            out[i:i + img_rows, c:c + cap_rows] = scores
    return out


def side_rows(side: Side, start: int, stop: int) -> Side:
    """Rows start:stop of a side, still a side of the same kind: a token store's rows stay memory-mapped
    (read a scoring block at a time, as the whole store's are), encoded tokens are a view."""
    if isinstance(side, StoredSide):
        return StoredSide(side.tokens[start:stop], side.mask[start:stop],
                          None if side.pooled is None else side.pooled[start:stop], side.device)
    if isinstance(side, EnsembleSide):
        return EnsembleSide([side_rows(m, start, stop) for m in side.members])
    return side[start:stop]


def diagonal_scores(teacher: Teacher, images: Side, captions: Side, folds: int, captions_per_image: int,
                    block_gib: float = 0.5, progress: bool = True, bf16: bool = False) -> Iterator[np.ndarray]:
    """`score_all` of each fold's own images x captions, fold by fold: the diagonal blocks of the
    matrix (folds 5: five 1K x 5K blocks of COCO's 5K x 25K), all a fold protocol ranks; 1 fold is
    the whole matrix. Caption j belongs to image j // captions_per_image."""
    n_img = len(images)
    if folds < 1 or n_img % folds or len(captions) != n_img * captions_per_image:
        raise ValueError(f"{n_img} images ({len(captions)} captions) cannot be split into {folds} equal folds "
                         f"of {captions_per_image} captions per image")
    if folds == 1:
        yield score_all(teacher, images, captions, block_gib, progress, bf16)
        return
    size = n_img // folds
    for f in range(folds):
        c0 = f * size * captions_per_image
        yield score_all(teacher, side_rows(images, f * size, (f + 1) * size),
                        side_rows(captions, c0, c0 + size * captions_per_image), block_gib, progress, bf16)


def global_sims(images: EncodedSide | StoredSide, captions: EncodedSide | StoredSide) -> np.ndarray:
    """(n_img, n_cap) float32 cosines of the teacher's global vectors: a cross-encoder's first stage."""
    if images.pooled is None or captions.pooled is None:
        raise ValueError("the teacher has no global vectors (teacher.global_weight is 0)")
    pooled = [p.float().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p, dtype=np.float32)
              for p in (images.pooled, captions.pooled)]
    return pooled[0] @ pooled[1].T


def candidate_scorer(teacher: Teacher, images: Side, captions: Side,
                     bf16: bool = False, max_elements: int = 1 << 24):
    """A function (direction, query ids, candidate ids) -> (Q, K) float32 teacher scores; direction
    't2i' queries captions against candidate images, 'i2t' images against candidate captions.
    Queries are taken in groups whose gathered tokens stay within `max_elements` numbers, so a token
    store is read a group at a time."""
    device = images.device
    per_candidate = (images.bytes_per_row() + captions.bytes_per_row()) // 4

    @torch.no_grad()
    def score(direction: str, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        query = {"t2i": "text", "i2t": "image"}[direction]
        step = max(1, max_elements // (per_candidate * max(1, candidates.shape[1])))
        out = []
        with autocast(device, bf16):
            for s in range(0, len(queries), step):
                q = torch.as_tensor(queries[s:s + step], device=device)
                c = torch.as_tensor(np.array(candidates[s:s + step]), device=device)
                out.append(teacher.score_candidates(images, captions, query, q, c).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, candidates.shape[1]), dtype=np.float32)

    return score
