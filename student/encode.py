"""Encoding a whole split with the student: the gallery side of retrieval."""
from __future__ import annotations

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.towers.frozen import NOT_FROZEN, Frozen, split_outputs
from student.model import DualEncoder


@torch.no_grad()
def encode_split(model: DualEncoder, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings (n_img, D), caption embeddings (n_cap, D)), float32, L2-normalised."""
    was_training = model.training
    model.eval()
    images = [model.images_from(o).float().cpu()
              for o in split_outputs(model, split, "image", preprocess, batch_size, device, frozen[0], progress)]
    captions = [model.captions_from(o).float().cpu()
                for o in split_outputs(model, split, "text", preprocess, batch_size, device, frozen[1], progress)]
    model.train(was_training)
    return torch.cat(images).numpy(), torch.cat(captions).numpy()
