"""The straightforward SCAN scorer: one caption at a time, attended vectors materialised.

This follows how the SCAN reference code evaluates: a Python loop over captions; each caption is
repeated once per image, the logits and the attended vectors come from batched products of small
per-image matrices, and relevances are cosines against the materialised attended vectors. It is
the ground truth `teacher.attention.scan_similarity` must reproduce, and the baseline its speed
is measured against (`itr-distill bench teacher`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from teacher.attention import EPS


def scan_similarity_loop(regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                         word_mask: torch.Tensor, direction: str = "t2i", aggregation: str = "lse",
                         lambda_softmax: float = 9.0, lambda_lse: float = 6.0) -> torch.Tensor:
    """Same contract as `scan_similarity`, computed caption by caption."""
    n_img = regions.shape[0]
    out = torch.empty(n_img, words.shape[0], dtype=regions.dtype, device=regions.device)
    regions = regions * region_mask[:, :, None]  # padded regions: zero logits, no part in any norm
    for c in range(words.shape[0]):
        caption = words[c][word_mask[c]].unsqueeze(0).repeat(n_img, 1, 1)  # (I, L, D): valid words only
        logits = F.leaky_relu(torch.bmm(regions, caption.transpose(1, 2)), 0.1)  # (I, R, L)
        if direction == "t2i":  # words attend over regions
            logits = logits / (logits.pow(2).sum(dim=2, keepdim=True).sqrt() + EPS)
            logits = (lambda_softmax * logits).masked_fill(~region_mask[:, :, None], float("-inf"))
            attended = torch.bmm(torch.softmax(logits.transpose(1, 2), dim=2), regions)  # (I, L, D)
            rel = F.cosine_similarity(caption, attended, dim=2, eps=EPS)
            valid = torch.ones_like(rel, dtype=torch.bool)
        else:  # regions attend over words
            logits = logits / (logits.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)
            attended = torch.bmm(torch.softmax(lambda_softmax * logits, dim=2), caption)  # (I, R, D)
            rel = F.cosine_similarity(regions, attended, dim=2, eps=EPS)
            valid = region_mask
        if aggregation == "lse":
            out[:, c] = torch.logsumexp((lambda_lse * rel).masked_fill(~valid, float("-inf")), dim=1) / lambda_lse
        else:
            out[:, c] = (rel * valid).sum(1) / valid.sum(1)
    return out
