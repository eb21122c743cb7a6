"""Scoring every image-caption pair of a split with the teacher."""
from __future__ import annotations

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


@torch.no_grad()
def score_all(teacher: ScanTeacher, images: EncodedSide, captions: EncodedSide, block: int = 256,
              progress: bool = True) -> np.ndarray:
    """(n_img, n_cap) float32 teacher scores, computed in blocks of images (progress per block)."""
    out = np.empty((images.tokens.shape[0], captions.tokens.shape[0]), dtype=np.float32)
    for start in bar(range(0, len(out), block), "teacher scoring", progress):
        out[start:start + block] = teacher.score(images[start:start + block], captions).float().cpu().numpy()
    return out
