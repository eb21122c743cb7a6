"""Encoding a whole split with the student: the gallery side of retrieval."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from core.data.images import ImagePreprocess
from core.data.loading import caption_batches, image_loader
from core.data.records import CaptionSplit
from student.model import DualEncoder


@torch.no_grad()
def encode_split(model: DualEncoder, split: CaptionSplit, preprocess: ImagePreprocess | None,
                 batch_size: int, device: torch.device, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image embeddings (n_img, D), caption embeddings (n_cap, D)), float32, L2-normalised."""
    was_training = model.training
    model.eval()
    images = [model.encode_images(b.images.to(device), None if b.image_mask is None else b.image_mask.to(device)).float().cpu()
              for b in tqdm(image_loader(split, preprocess, batch_size), desc="encode images", disable=not progress, leave=False)]
    captions = [model.encode_text(b.input_ids.to(device), b.attention_mask.to(device)).float().cpu()
                for b in tqdm(caption_batches(split, model.tokenize, batch_size), desc="encode captions",
                              disable=not progress, leave=False, total=-(-split.n_captions // batch_size))]
    model.train(was_training)
    return torch.cat(images).numpy(), torch.cat(captions).numpy()
