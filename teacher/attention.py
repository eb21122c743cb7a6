"""SCAN stacked cross attention (Lee et al., ECCV 2018), batched over image-caption pairs.

For a pair, each query token j attends over the context tokens r with clipped-l2norm attention:
logits s_jr = <context_r, query_j>, LeakyReLU(0.1), l2-normalised over the query tokens, softmax
over the context tokens scaled by lambda_softmax. The relevance of query token j is the cosine
between it and its attended vector a_j = sum_r alpha_jr context_r; relevances are pooled by
LogSumExp (lambda_lse) or mean.

The attended vectors are not materialised: <q_j, a_j> = sum_r alpha_jr s_jr reuses the logits,
and ||a_j||^2 = alpha_j^T G alpha_j with G = C C^T, one small Gram matrix per context item. A block
of I images x C captions then costs I*C*L*R*(D + R) instead of I*C*L*R*D plus an I*C*L*D tensor,
where L is the longest caption of a group of similar lengths, not of the whole set. (Explicit pairs
whose context items are gathered per pair, e.g. a caption's top-K images, form them instead where
that is cheaper than a Gram matrix per pair: `context_norms`.)

Two layouts share the arithmetic: every image with every caption (`scan_similarity`, all-pairs
scoring and training) and explicit pairs (`scan_pair_scores`, a query with its candidates).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from core.length_groups import length_groups

EPS = 1e-8
DIRECTIONS = ("t2i", "i2t")
AGGREGATIONS = ("lse", "mean")


def check_masks(name: str, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid token), got {mask.dtype}")
    if mask.numel() and not bool(mask.any(dim=-1).all()):
        raise ValueError(f"{name}: every item needs at least one valid token")


def check_options(direction: str, aggregation: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def attention_weights(logits: torch.Tensor, context_mask: torch.Tensor | None, lambda_softmax: float) -> torch.Tensor:
    """Clipped-l2norm attention of query tokens (dim -2) over context tokens (dim -1).

    Padded query tokens must have zero logits (zeroed features do that): they then drop out of the
    l2 norm over the query tokens. `context_mask` (broadcastable to the logits, None = all valid)
    keeps padded context tokens out of the softmax.
    """
    attn = F.leaky_relu(logits, 0.1)
    # EPS^2 under the root keeps the gradient finite for all-zero columns
    attn = attn * (lambda_softmax / ((attn.pow(2).sum(dim=-2, keepdim=True) + EPS * EPS).sqrt() + EPS))
    if context_mask is not None:
        attn = attn.masked_fill(~context_mask, float("-inf"))
    return torch.softmax(attn, dim=-1)


def pool_relevance(relevance: torch.Tensor, mask: torch.Tensor, aggregation: str, lambda_lse: float) -> torch.Tensor:
    """LogSumExp (scaled by lambda_lse) or mean of the valid query tokens' relevances (last dim)."""
    if aggregation == "lse":
        return torch.logsumexp((lambda_lse * relevance).masked_fill(~mask, float("-inf")), dim=-1) / lambda_lse
    weights = mask.to(relevance.dtype)
    return (relevance * weights).sum(-1) / weights.sum(-1)


def _quadratic(alpha: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """alpha_q^T G alpha_q for alpha (A, B, Q, K) and Gram matrices (A|1, B|1, K, K), without
    expanding G over the broadcast dimension."""
    a, b, q, k = alpha.shape
    if gram.shape[1] == 1 and gram.shape[0] == a:
        prod = torch.bmm(alpha.reshape(a, b * q, k), gram[:, 0]).view(a, b, q, k)
    elif gram.shape[0] == 1 and gram.shape[1] == b:
        prod = torch.bmm(alpha.transpose(0, 1).reshape(b, a * q, k), gram[0]).view(b, a, q, k).transpose(0, 1)
    else:
        prod = torch.bmm(alpha.reshape(a * b, q, k), gram.expand(a, b, k, k).reshape(a * b, k, k)).view(a, b, q, k)
    return (prod * alpha).sum(-1)


def scores_from_logits(logits: torch.Tensor, query_norm: torch.Tensor, query_mask: torch.Tensor,
                       context_mask: torch.Tensor | None, context: torch.Tensor, aggregation: str,
                       lambda_softmax: float, lambda_lse: float) -> torch.Tensor:
    """SCAN scores (A, B) from raw logits (A, B, Q, K) of zero-padded, unnormalised tokens.

    query_norm / query_mask broadcast to (A, B, Q); context_mask to (A, B, 1, K) or None;
    `context` is what the attended vectors' norms come from (`context_norms`): Gram matrices
    (A|1, B|1, K, K), or the context tokens themselves (A, B, K, D).
    """
    alpha = attention_weights(logits, context_mask, lambda_softmax)
    dot = (alpha * logits).sum(-1)  # <query_j, attended_j>
    if context.shape[-1] == context.shape[-2] == logits.shape[-1]:
        squared = _quadratic(alpha, context)
    else:
        squared = (alpha @ context).pow(2).sum(-1)
    attended_norm = squared.clamp_min(EPS * EPS).sqrt()
    relevance = dot / (attended_norm * query_norm).clamp_min(EPS)
    return pool_relevance(relevance, query_mask.expand_as(relevance), aggregation, lambda_lse)


def gram(tokens: torch.Tensor) -> torch.Tensor:
    """Per-item Gram matrices (N, T, T) of token sets (N, T, D)."""
    return tokens @ tokens.transpose(-1, -2)


def context_norms(context: torch.Tensor, query_tokens: int) -> torch.Tensor:
    """What `scores_from_logits` takes for the attended vectors' norms, from the context tokens
    (A|1, B|1, K, D) of pairs that query with `query_tokens` tokens: their Gram matrices, which
    cost K*K*D per context item and are shared by every pair that item is broadcast over; or, where
    each pair has its own context items (top-K candidates gathered per query) and K > query_tokens,
    the tokens themselves, since forming the attended vectors (query_tokens*K*D per pair) then
    costs less than a Gram per pair (with 49 regions and 15 words, about a third)."""
    own_items = context.shape[0] > 1 and context.shape[1] > 1
    if own_items and context.shape[-2] > query_tokens and context.shape[-2] != context.shape[-1]:
        return context
    return gram(context)


def _any_padding(mask: torch.Tensor) -> bool:
    return not bool(mask.all())


def pair_blocks(n_img: int, n_cap: int, elements_per_pair: int, max_elements: int) -> Iterator[tuple[slice, slice]]:
    """(image slice, caption slice) blocks covering every pair, each within `max_elements`.

    Blocks are made as square as the budget allows (at least 8 images when there are that many)
    so that the logits come from one well-shaped matrix product rather than thin ones.
    """
    pairs = max(1, max_elements // max(1, elements_per_pair))
    img_block = max(1, min(n_img, 8, pairs))
    cap_block = max(1, min(n_cap, pairs // img_block))
    img_block = max(1, min(n_img, pairs // cap_block))
    for i0 in range(0, n_img, img_block):
        for c0 in range(0, n_cap, cap_block):
            yield slice(i0, min(n_img, i0 + img_block)), slice(c0, min(n_cap, c0 + cap_block))


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
    Captions are taken in groups of similar length, each trimmed to its longest
    (`core.length_groups`), so padding words cost almost nothing; each block's logits are one matrix
    product of a group's words with a block of regions.
    """
    check_options(direction, aggregation)
    if regions.shape[-1] != words.shape[-1]:
        raise ValueError(f"feature dims differ: regions {regions.shape[-1]}, words {words.shape[-1]}")
    check_masks("region_mask", region_mask)
    check_masks("word_mask", word_mask)
    n_img, n_reg, dim = regions.shape
    regions = regions * region_mask.unsqueeze(-1)
    words = words * word_mask.unsqueeze(-1)
    region_norm, word_norm = regions.norm(dim=-1), words.norm(dim=-1)
    t2i = direction == "t2i"
    region_grams = gram(regions) if t2i else None
    # the context side's mask matters only where it has padding
    context_padded = _any_padding(region_mask if t2i else word_mask)
    # captions by length, each group trimmed to its longest; a group is sized for at least 8 images per block
    groups = length_groups(word_mask, max(1, max_chunk_elements // (min(n_img, 8) * n_reg)))

    out = regions.new_empty(n_img, len(words))  # caption columns in `groups.order`
    for start, stop, width in groups.spans:
        ids = groups.order[start:stop]
        g_words, g_mask, g_norm = words[ids, :width], word_mask[ids, :width], word_norm[ids, :width]
        word_grams = None if t2i else gram(g_words)
        step = max(1, min(n_img, max_chunk_elements // ((stop - start) * width * n_reg)))
        for i0 in range(0, n_img, step):
            im, c = slice(i0, min(n_img, i0 + step)), stop - start
            i = im.stop - im.start
            # one GEMM: (C*L, D) x (D, I*R) -> logits[i, c, l, r]
            logits = (g_words.reshape(-1, dim) @ regions[im].reshape(-1, dim).T).view(c, width, i, n_reg)
            if t2i:  # queries: words; context: regions
                logits = logits.permute(2, 0, 1, 3).contiguous()
                context_mask = region_mask[im, None, None, :] if context_padded else None
                out[im, start:stop] = scores_from_logits(logits, g_norm[None], g_mask[None], context_mask,
                                                         region_grams[im, None], aggregation, lambda_softmax,
                                                         lambda_lse)
            else:  # queries: regions; context: words
                logits = logits.permute(2, 0, 3, 1).contiguous()
                context_mask = g_mask[None, :, None, :] if context_padded else None
                out[im, start:stop] = scores_from_logits(logits, region_norm[im, None], region_mask[im, None],
                                                         context_mask, word_grams[None], aggregation,
                                                         lambda_softmax, lambda_lse)
    return groups.restore(out, dim=1)


def scan_pair_scores(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    direction: Literal["t2i", "i2t"] = "t2i",
    aggregation: Literal["lse", "mean"] = "lse",
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
) -> torch.Tensor:
    """SCAN scores of explicit pairs laid out (A, B): regions (A|1, B|1, R, D) with their masks,
    words (A|1, B|1, L, D); e.g. one caption (A) against its K candidate images (B). Returns (A, B)."""
    check_options(direction, aggregation)
    region_padded, word_padded = _any_padding(region_mask), _any_padding(word_mask)
    if region_padded:  # candidates gathered per query make these the largest tensors: touch them only if needed
        regions = regions * region_mask.unsqueeze(-1)
    if word_padded:
        words = words * word_mask.unsqueeze(-1)
    logits = torch.matmul(words, regions.transpose(-1, -2))  # (A, B, L, R)
    n_reg, n_word = regions.shape[-2], words.shape[-2]
    if direction == "t2i":
        context_mask = region_mask.unsqueeze(-2) if region_padded else None
        return scores_from_logits(logits, words.norm(dim=-1), word_mask, context_mask, context_norms(regions, n_word),
                                  aggregation, lambda_softmax, lambda_lse)
    context_mask = word_mask.unsqueeze(-2) if word_padded else None
    return scores_from_logits(logits.transpose(-1, -2), regions.norm(dim=-1), region_mask, context_mask,
                              context_norms(words, n_reg), aggregation, lambda_softmax, lambda_lse)
