"""Loss functions for the teacher fit and student distillation.

A batch holds B (image, caption) pairs; `sims[i, j]` scores image i against caption j, and
`image_index` tells which pairs share an image (five captions per image means a batch can hold
two captions of one image). Such pairs are never treated as negatives: they are masked out of
every softmax and every hinge, and the diagonal stays the positive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def same_image_off_diagonal(image_index: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: pairs (i, j), i != j, whose images are the same image."""
    same = image_index[:, None] == image_index[None, :]
    return same & ~torch.eye(len(image_index), dtype=torch.bool, device=image_index.device)


def _with_extra(main: torch.Tensor, excluded: torch.Tensor, extra: torch.Tensor | None = None,
                extra_excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of logits over the batch's candidates, then over queued ones; excluded entries -inf."""
    rows = main.masked_fill(excluded, float("-inf"))
    if extra is None or extra.shape[1] == 0:
        return rows
    return torch.cat([rows, extra.masked_fill(extra_excluded, float("-inf"))], dim=1)


@dataclass
class Beyond:
    """Candidates beyond the batch for each direction: i2t rows (batch images against queued
    captions) and t2i rows (batch captions against queued images), with what each row must exclude."""

    i2t: torch.Tensor  # (B, Q)
    i2t_excluded: torch.Tensor  # (B, Q) bool
    t2i: torch.Tensor  # (B, Q)
    t2i_excluded: torch.Tensor  # (B, Q) bool


def infonce(sims: torch.Tensor, image_index: torch.Tensor, logit_scale: torch.Tensor | float,
            beyond: Beyond | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy over each image's captions (i2t) and each caption's
    images (t2i), with queued candidates appended as extra negatives when given."""
    excluded = same_image_off_diagonal(image_index)
    extra = (None,) * 4 if beyond is None else (beyond.i2t * logit_scale, beyond.i2t_excluded,
                                                beyond.t2i * logit_scale, beyond.t2i_excluded)
    i2t = _with_extra(sims * logit_scale, excluded, extra[0], extra[1])
    t2i = _with_extra(sims.T * logit_scale, excluded, extra[2], extra[3])
    target = torch.arange(len(sims), device=sims.device)
    return (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target)) / 2


def hinge(sims: torch.Tensor, image_index: torch.Tensor, margin: float, max_violation: bool) -> torch.Tensor:
    """VSE++ triplet hinge: hardest negative (max_violation) or sum of violations, both directions.

    Averaged over the batch so that the loss scale does not depend on the batch size.
    """
    positive = sims.diagonal()
    negatives = ~(image_index[:, None] == image_index[None, :])
    cost_caption = (margin + sims - positive[:, None]).clamp(min=0) * negatives  # image i, wrong caption j
    cost_image = (margin + sims - positive[None, :]).clamp(min=0) * negatives  # caption j, wrong image i
    if max_violation:
        return (cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()) / len(sims)
    return (cost_caption.sum() + cost_image.sum()) / len(sims)


def soft_cross_entropy(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(softmax(target), softmax(logits)); -inf in the target = excluded."""
    p = torch.softmax(target_logits, dim=1)
    log_q = torch.log_softmax(logits, dim=1)
    return -(p * log_q.masked_fill(p == 0, 0.0)).sum(dim=1).mean()


def listnet(student_sims: torch.Tensor, teacher_sims: torch.Tensor, image_index: torch.Tensor,
            teacher_temperature: float, student_scale: float, student_beyond: Beyond | None = None,
            teacher_beyond: Beyond | None = None) -> torch.Tensor:
    """ListNet distillation (ALADIN), both directions: each image's ranking of the batch's captions
    and each caption's ranking of the images, as a softmax, is pulled towards the teacher's; queued
    candidates (with the teacher's scores of them) extend each list when given. The teacher's scores
    get their own temperature: SCAN scores are averaged cosines whose softmax is nearly flat at the
    student's scale."""
    excluded = same_image_off_diagonal(image_index)
    t_sims = teacher_sims.to(student_sims.dtype) / teacher_temperature
    s_sims = student_sims * student_scale
    sb, tb = student_beyond, teacher_beyond
    loss = 0.0
    for t_main, s_main, extra in ((t_sims, s_sims, "i2t"), (t_sims.T, s_sims.T, "t2i")):
        mask = excluded if extra == "i2t" else excluded.T
        t_extra = None if tb is None else getattr(tb, extra).to(s_main.dtype) / teacher_temperature
        s_extra = None if sb is None else getattr(sb, extra) * student_scale
        extra_mask = None if sb is None else getattr(sb, f"{extra}_excluded")
        loss = loss + soft_cross_entropy(_with_extra(t_main, mask, t_extra, extra_mask),
                                         _with_extra(s_main, mask, s_extra, extra_mask))
    return loss / 2


def candidate_listnet(query_emb: torch.Tensor, candidate_emb: torch.Tensor, teacher_scores: torch.Tensor,
                      teacher_temperature: float, student_scale: float) -> torch.Tensor:
    """ListNet over each query's own candidate list: query (B, D) against its candidates (B, N, D),
    the teacher's scores of them (B, N)."""
    student = torch.einsum("bd,bnd->bn", query_emb, candidate_emb.to(query_emb.dtype)) * student_scale
    return soft_cross_entropy(teacher_scores.to(student.dtype) / teacher_temperature, student)


def calibrated_teacher_temperature(lookup: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n_images: int,
                                   captions_per_image: int, batch_size: int, logit_std: float, seed: int = 0,
                                   batches: int = 32) -> tuple[float, float]:
    """(temperature, spread): the temperature at which the teacher's scores of random in-batch
    pairs have a per-row standard deviation of `logit_std`, and that measured spread. `lookup`
    gives the teacher's scores of (image ids, caption ids), from the cache or online: the same
    sampled batches give the same temperature either way."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, n_images)
    spreads = []
    for _ in range(batches):
        images = np.sort(rng.choice(n_images, size, replace=False))
        captions = images * captions_per_image + rng.integers(0, captions_per_image, size=size)
        scores = lookup(torch.from_numpy(images), torch.from_numpy(captions)).double().cpu().numpy()
        spreads.append(scores.std(axis=1).mean())
    spread = float(np.mean(spreads))
    if not spread > 1e-8:
        raise ValueError("the teacher's scores do not vary within a batch: nothing to distil")
    return spread / logit_std, spread


def calibrated_list_temperature(score_lists: list[np.ndarray], candidates: int, logit_std: float,
                                rows: int = 4096, seed: int = 0) -> tuple[float, float]:
    """(temperature, spread) for the cached top-K lists: the spread is the mean per-list standard
    deviation of the teacher's scores of a query's first `candidates` candidates (a sample of
    `rows` queries per direction); hard candidates are closer together than random in-batch pairs."""
    rng = np.random.default_rng(seed)
    spreads = []
    for scores in score_lists:
        picked = np.sort(rng.choice(len(scores), min(rows, len(scores)), replace=False))
        spreads.append(np.asarray(scores[picked, :candidates], dtype=np.float64).std(axis=1).mean())
    spread = float(np.mean(spreads))
    if not spread > 1e-8:
        raise ValueError("the teacher's scores do not vary within the cached lists: nothing to distil")
    return spread / logit_std, spread
