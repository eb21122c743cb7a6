"""Scoring a split with the teacher: every image-caption pair, or each query's candidates."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.progress import progress as bar
from core.towers.frozen import NOT_FROZEN, Frozen, split_outputs
from teacher.model import EncodedSide, ScanTeacher


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
    was_training = teacher.training
    teacher.eval()
    images = [teacher.images_from(o) for o in split_outputs(teacher, split, "image", preprocess, batch_size, device,
                                                            frozen[0], progress)]
    captions = [teacher.captions_from(o) for o in split_outputs(teacher, split, "text", preprocess, batch_size, device,
                                                                frozen[1], progress)]
    teacher.train(was_training)
    return _pad_cat(images), _pad_cat(captions)


def precision(device: torch.device, bf16: bool) -> str:
    """The arithmetic teacher scores are made with: bf16 autocast on a GPU when asked, else float32."""
    return "bf16-autocast" if bf16 and device.type == "cuda" else "float32"


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if precision(device, bf16) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


@torch.no_grad()
def score_all(teacher: ScanTeacher, images: EncodedSide, captions: EncodedSide, block: int = 256,
              progress: bool = True, bf16: bool = False) -> np.ndarray:
    """(n_img, n_cap) float32 teacher scores, computed in blocks of images (progress per block)."""
    out = np.empty((images.tokens.shape[0], captions.tokens.shape[0]), dtype=np.float32)
    with _autocast(images.tokens.device, bf16):
        for start in bar(range(0, len(out), block), "teacher scoring", progress):
            out[start:start + block] = teacher.score(images[start:start + block], captions).float().cpu().numpy()
    return out


def candidate_scorer(teacher: ScanTeacher, images: EncodedSide, captions: EncodedSide, bf16: bool = False,
                     max_elements: int = 1 << 24):
    """A function (direction, query ids, candidate ids) -> (Q, K) float32 teacher scores; direction
    't2i' queries captions against candidate images, 'i2t' images against candidate captions.
    Queries are taken in groups whose gathered tokens stay within `max_elements` numbers."""
    device = images.tokens.device
    per_candidate = (images.tokens.shape[1] + captions.tokens.shape[1]) * images.tokens.shape[2]

    @torch.no_grad()
    def score(direction: str, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        query = {"t2i": "text", "i2t": "image"}[direction]
        step = max(1, max_elements // (per_candidate * max(1, candidates.shape[1])))
        out = []
        with _autocast(device, bf16):
            for s in range(0, len(queries), step):
                q = torch.as_tensor(queries[s:s + step], device=device)
                c = torch.as_tensor(np.array(candidates[s:s + step]), device=device)
                out.append(teacher.score_candidates(images, captions, query, q, c).float().cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, candidates.shape[1]), dtype=np.float32)

    return score
