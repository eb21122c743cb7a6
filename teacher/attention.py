"""SCAN stacked cross attention (Lee et al., ECCV 2018), batched over every image-caption pair.

For a pair, each query token j attends over the context tokens r with clipped-l2norm attention:
logits s_jr = <context_r, query_j>, LeakyReLU(0.1), l2-normalised over the query tokens, softmax
over the context tokens scaled by lambda_softmax. The relevance of query token j is the cosine
between it and its attended vector a_j = sum_r alpha_jr context_r; relevances are pooled by
LogSumExp (lambda_lse) or mean.

The attended vectors are never materialised: <q_j, a_j> = sum_r alpha_jr s_jr reuses the logits,
and ||a_j||^2 = alpha_j^T G alpha_j with G = C C^T, one small Gram matrix per context item. A chunk
of I images x C captions then costs I*C*L*R*(D + R) instead of I*C*L*R*D plus an I*C*L*D tensor.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

EPS = 1e-8


def _check_masks(name: str, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid token), got {mask.dtype}")
    if mask.numel() and not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: every item needs at least one valid token")


def _block_scores(
    regions: torch.Tensor, region_mask: torch.Tensor, region_gram: torch.Tensor, region_norm: torch.Tensor,
    words: torch.Tensor, word_mask: torch.Tensor, word_gram: torch.Tensor | None, word_norm: torch.Tensor,
    direction: str, aggregation: str, lambda_softmax: float, lambda_lse: float,
) -> torch.Tensor:
    """Scores of one block: regions (I, R, D) x words (C, L, D) -> (I, C)."""
    n_img, n_cap = regions.shape[0], words.shape[0]
    # raw[i, c, l, r] = <word_cl, region_ir>
    raw = torch.matmul(words.reshape(1, -1, words.shape[-1]), regions.transpose(1, 2))
    raw = raw.view(n_img, n_cap, words.shape[1], regions.shape[1])
    if direction == "t2i":  # queries: words; context: regions
        qmask, kmask = word_mask[None, :, :, None], region_mask[:, None, None, :]
        qnorm = word_norm[None, :, :]
        agg_mask = word_mask[None, :, :]
    else:  # queries: regions; context: words
        raw = raw.transpose(2, 3)
        qmask, kmask = region_mask[:, None, :, None], word_mask[None, :, None, :]
        qnorm = region_norm[:, None, :]
        agg_mask = region_mask[:, None, :]
    attn = F.leaky_relu(raw, 0.1) * qmask
    # l2norm over the query tokens; EPS^2 under the root keeps the gradient finite for all-zero columns
    attn = attn / ((attn.pow(2).sum(dim=2, keepdim=True) + EPS * EPS).sqrt() + EPS)
    attn = (lambda_softmax * attn).masked_fill(~kmask, float("-inf"))
    alpha = torch.softmax(attn, dim=-1)
    dot = (alpha * raw).sum(-1)  # <query_j, attended_j>
    if direction == "t2i":
        alpha_gram = torch.einsum("icqk,ikm->icqm", alpha, region_gram)
    else:
        alpha_gram = torch.einsum("icqk,ckm->icqm", alpha, word_gram)
    attended_norm = (alpha_gram * alpha).sum(-1).clamp_min(EPS * EPS).sqrt()
    relevance = dot / (attended_norm * qnorm).clamp_min(EPS)
    if aggregation == "lse":
        relevance = (lambda_lse * relevance).masked_fill(~agg_mask, float("-inf"))
        return torch.logsumexp(relevance, dim=-1) / lambda_lse
    weights = agg_mask.to(relevance.dtype)
    return (relevance * weights).sum(-1) / weights.sum(-1)


def scan_similarity(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    direction: Literal["t2i", "i2t"] = "t2i",
    aggregation: Literal["lse", "mean"] = "lse",
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    max_chunk_elements: int = 1 << 20,
) -> torch.Tensor:
    """SCAN similarity of every image with every caption: (n_img, n_cap).

    regions (n_img, R, D), region_mask (n_img, R) bool; words (n_cap, L, D), word_mask (n_cap, L)
    bool. Inputs are used as given (normalise them beforehand if you want cosine logits). Padded
    tokens take no part anywhere. Work is split into blocks of at most `max_chunk_elements`
    word-region logits, so peak memory is bounded whatever the number of pairs; gradients flow.
    """
    if direction not in ("t2i", "i2t"):
        raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")
    if aggregation not in ("lse", "mean"):
        raise ValueError(f"aggregation must be 'lse' or 'mean', got {aggregation!r}")
    if regions.shape[-1] != words.shape[-1]:
        raise ValueError(f"feature dims differ: regions {regions.shape[-1]}, words {words.shape[-1]}")
    _check_masks("region_mask", region_mask)
    _check_masks("word_mask", word_mask)
    n_img, n_reg = regions.shape[:2]
    n_cap, n_word = words.shape[:2]
    regions = regions * region_mask.unsqueeze(-1)
    words = words * word_mask.unsqueeze(-1)
    region_norm, word_norm = regions.norm(dim=-1), words.norm(dim=-1)
    region_gram = regions @ regions.transpose(1, 2) if direction == "t2i" else None
    word_gram = words @ words.transpose(1, 2) if direction == "i2t" else None

    pairs = max(1, max_chunk_elements // (n_word * n_reg))
    cap_block = min(n_cap, pairs)
    img_block = max(1, min(n_img, pairs // cap_block))
    rows = []
    for i0 in range(0, n_img, img_block):
        i1 = min(n_img, i0 + img_block)
        cols = []
        for c0 in range(0, n_cap, cap_block):
            c1 = min(n_cap, c0 + cap_block)
            cols.append(_block_scores(
                regions[i0:i1], region_mask[i0:i1],
                region_gram[i0:i1] if region_gram is not None else None, region_norm[i0:i1],
                words[c0:c1], word_mask[c0:c1],
                word_gram[c0:c1] if word_gram is not None else None, word_norm[c0:c1],
                direction, aggregation, lambda_softmax, lambda_lse,
            ))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)
