"""Encoding a whole split with the student: the gallery side of retrieval."""
from __future__ import annotations

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.towers.frozen import NOT_FROZEN, Frozen, FrozenOutputs, split_outputs
from student.model import DualEncoder


@torch.no_grad()
def encode_side(model: DualEncoder, split: CaptionSplit, side: str, preprocess: ImagePreprocess | None, batch_size: int,
                device: torch.device, progress: bool = True, frozen: FrozenOutputs | None = None) -> np.ndarray:
    """Embeddings (N, D), float32, L2-normalised, of a split's images (side 'image') or captions ('text');
    `frozen`: that side's cached tower outputs."""
    was_training = model.training
    model.eval()
    embed = model.images_from if side == "image" else model.captions_from
    out = [embed(o).float().cpu() for o in split_outputs(model, split, side, preprocess, batch_size, device, frozen, progress)]
    model.train(was_training)
    return torch.cat(out).numpy()


def encode_split(model: DualEncoder, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings (n_img, D), caption embeddings (n_cap, D)), float32, L2-normalised."""
    return (encode_side(model, split, "image", preprocess, batch_size, device, progress, frozen[0]),
            encode_side(model, split, "text", preprocess, batch_size, device, progress, frozen[1]))
