"""Scoring every image-caption pair of a split with the teacher."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from core.data.images import ImagePreprocess
from core.data.loading import caption_batches, image_loader
from core.data.records import CaptionSplit
from teacher.model import EncodedSide, ScanTeacher


def _pad_cat(sides: list[EncodedSide]) -> EncodedSide:
    """Concatenate encoded batches whose token counts differ (captions padded per batch)."""
    width = max(s.tokens.shape[1] for s in sides)
    tokens = torch.cat([torch.nn.functional.pad(s.tokens, (0, 0, 0, width - s.tokens.shape[1])) for s in sides])
    mask = torch.cat([torch.nn.functional.pad(s.mask, (0, width - s.mask.shape[1])) for s in sides])
    pooled = None if sides[0].pooled is None else torch.cat([s.pooled for s in sides])
    return EncodedSide(tokens, mask, pooled)


@torch.no_grad()
def encode_split(teacher: ScanTeacher, split: CaptionSplit, preprocess: ImagePreprocess | None,
                 batch_size: int, device: torch.device, progress: bool = True) -> tuple[EncodedSide, EncodedSide]:
    """The teacher's token features for every image and every caption of a split."""
    was_training = teacher.training
    teacher.eval()
    images = [teacher.encode_images(b.images.to(device), None if b.image_mask is None else b.image_mask.to(device))
              for b in tqdm(image_loader(split, preprocess, batch_size), desc="teacher images", disable=not progress, leave=False)]
    captions = [teacher.encode_text(b.input_ids.to(device), b.attention_mask.to(device))
                for b in tqdm(caption_batches(split, teacher.tokenize, batch_size), desc="teacher captions",
                              disable=not progress, leave=False, total=-(-split.n_captions // batch_size))]
    teacher.train(was_training)
    return _pad_cat(images), _pad_cat(captions)


@torch.no_grad()
def score_all(teacher: ScanTeacher, images: EncodedSide, captions: EncodedSide, block: int = 256,
              progress: bool = True) -> np.ndarray:
    """(n_img, n_cap) float32 teacher scores, computed in blocks of images (progress per block)."""
    out = np.empty((images.tokens.shape[0], captions.tokens.shape[0]), dtype=np.float32)
    for start in tqdm(range(0, len(out), block), desc="teacher scoring", disable=not progress, leave=False):
        out[start:start + block] = teacher.score(images[start:start + block], captions).float().cpu().numpy()
    return out
