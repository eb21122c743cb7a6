"""The straightforward SCAN scorer: one caption at a time, attended vectors materialised.

This is how the SCAN reference code evaluates (a Python loop over captions, each batched over
all images). It is kept as the ground truth that `teacher.attention.scan_similarity` must
reproduce, and as the baseline its speed is measured against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from teacher.attention import EPS


def scan_similarity_loop(regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                         word_mask: torch.Tensor, direction: str = "t2i", aggregation: str = "lse",
                         lambda_softmax: float = 9.0, lambda_lse: float = 6.0) -> torch.Tensor:
    """Same contract as `scan_similarity`, computed caption by caption."""
    out = torch.empty(regions.shape[0], words.shape[0], dtype=regions.dtype)
    rmask = region_mask[:, :, None]  # (I, R, 1)
    for c in range(words.shape[0]):
        w = words[c][word_mask[c]]  # (L, D): valid words only
        logits = F.leaky_relu(regions @ w.T, 0.1)  # (I, R, L)
        if direction == "t2i":  # words attend over regions
            logits = logits / (logits.pow(2).sum(dim=2, keepdim=True).sqrt() + EPS)
            logits = (lambda_softmax * logits).masked_fill(~rmask, float("-inf")).transpose(1, 2)
            attended = torch.softmax(logits, dim=2) @ regions  # (I, L, D)
            rel = F.cosine_similarity(w[None].expand_as(attended), attended, dim=2, eps=EPS)
            valid = torch.ones_like(rel, dtype=torch.bool)
        else:  # regions attend over words
            logits = logits * rmask
            logits = logits / (logits.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)
            attended = torch.softmax(lambda_softmax * logits, dim=2) @ w  # (I, R, D)
            rel = F.cosine_similarity(regions, attended, dim=2, eps=EPS)
            valid = region_mask
        if aggregation == "lse":
            out[:, c] = torch.logsumexp((lambda_lse * rel).masked_fill(~valid, float("-inf")), dim=1) / lambda_lse
        else:
            out[:, c] = (rel * valid).sum(1) / valid.sum(1)
    return out
