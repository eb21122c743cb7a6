"""Local similarity labels from the corpus's words, for the hierarchical embedding's local space.

The label of (image i, caption c) is the IDF-weighted share of c's words that also occur in i's
*other* captions: how much of what c says about an image other people said about image i too. For c's
own image this excludes c itself (else every positive would score 1); function words weigh little
because they occur everywhere (IDF log((1 + n) / (1 + df)), zero for a word in every caption), so no
stop-word list is needed. Labels lie in [0, 1]; a caption without informative words scores 0 everywhere.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch

WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    """The distinct lowercase alphanumeric words of a caption, in order of first use."""
    return list(dict.fromkeys(WORD.findall(caption.lower())))


class LexicalLabels:
    """Labels for any images against any captions of one split (captions image-major,
    `captions_per_image` each, as in CaptionSplit)."""

    def __init__(self, captions: Sequence[str], captions_per_image: int):
        tokenised = [words(c) for c in captions]
        df = Counter(w for ws in tokenised for w in ws)
        n = len(captions)
        vocab = sorted(df)
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.idf = np.array([math.log((1 + n) / (1 + df[w])) for w in vocab], dtype=np.float32)
        self.captions_per_image = captions_per_image
        self.caption_words = [np.array([self.vocab[w] for w in ws], dtype=np.int64) for ws in tokenised]
        self.caption_mass = np.array([self.idf[ids].sum() for ids in self.caption_words], dtype=np.float32)

    def _image_counts(self, images: np.ndarray) -> np.ndarray:
        """(I, V): in how many of each image's captions each word occurs."""
        counts = np.zeros((len(images), len(self.vocab)), dtype=np.int32)
        k = self.captions_per_image
        for row, image in enumerate(images):
            for c in range(image * k, (image + 1) * k):
                counts[row, self.caption_words[c]] += 1
        return counts

    def __call__(self, image_index: torch.Tensor, caption_index: torch.Tensor) -> torch.Tensor:
        """(I, C) float32 labels of the given images against the given captions (split positions)."""
        images, captions = image_index.cpu().numpy(), caption_index.cpu().numpy()
        counts = self._image_counts(images)
        own = (captions[None, :] // self.captions_per_image) == images[:, None]  # (I, C)
        labels = np.zeros((len(images), len(captions)), dtype=np.float32)
        for col, c in enumerate(captions):
            ids = self.caption_words[c]
            if not self.caption_mass[c] > 0:  # no words, or only words that every caption has
                continue
            # a word of c is confirmed by image i when another caption of i has it: c itself counts once for its own image
            confirmed = counts[:, ids] > own[:, col:col + 1].astype(np.int32)
            labels[:, col] = (confirmed * self.idf[ids]).sum(axis=1) / self.caption_mass[c]
        return torch.from_numpy(labels)
