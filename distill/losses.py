"""Loss terms for the teacher fit and student distillation.

A batch holds B (image, caption) pairs; `sims[i, j]` scores image i against caption j, and
`image_index` tells which pairs share an image (five captions per image means a batch can hold
two captions of one image). Such pairs are never treated as negatives: they are masked out of
every softmax and every hinge, and the diagonal stays the positive.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import LossesConfig, TeacherConfig


def same_image_off_diagonal(image_index: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: pairs (i, j), i != j, whose images are the same image."""
    same = image_index[:, None] == image_index[None, :]
    return same & ~torch.eye(len(image_index), dtype=torch.bool, device=image_index.device)


def infonce(sims: torch.Tensor, image_index: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy over each row (i2t) and each column (t2i)."""
    logits = (sims * logit_scale).masked_fill(same_image_off_diagonal(image_index), float("-inf"))
    target = torch.arange(len(sims), device=sims.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


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


def _soft_cross_entropy(target_logits: torch.Tensor, logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over rows (dim=1) or columns (dim=0) of CE(softmax(target), softmax(logits)); -inf = excluded."""
    p = torch.softmax(target_logits, dim=dim)
    log_q = torch.log_softmax(logits, dim=dim)
    return -(p * log_q.masked_fill(p == 0, 0.0)).sum(dim=dim).mean()


def listnet(student_sims: torch.Tensor, teacher_sims: torch.Tensor, image_index: torch.Tensor,
            teacher_temperature: float, student_scale: float) -> torch.Tensor:
    """ListNet distillation (ALADIN), both directions: each row (an image ranking the batch's
    captions) and each column (a caption ranking the images) of the student's softmax is pulled
    towards the teacher's. The teacher's scores get their own temperature: SCAN scores are averaged
    cosines whose softmax is nearly flat at the student's scale."""
    excluded = same_image_off_diagonal(image_index)
    t = (teacher_sims.to(student_sims.dtype) / teacher_temperature).masked_fill(excluded, float("-inf"))
    s = (student_sims * student_scale).masked_fill(excluded, float("-inf"))
    return (_soft_cross_entropy(t, s, dim=1) + _soft_cross_entropy(t, s, dim=0)) / 2


def calibrated_teacher_temperature(scores: np.ndarray, captions_per_image: int, batch_size: int,
                                   logit_std: float, seed: int = 0, batches: int = 32) -> tuple[float, float]:
    """(temperature, spread): the temperature at which the teacher's scores of random in-batch
    pairs have a per-row standard deviation of `logit_std`, and that measured spread."""
    rng = np.random.default_rng(seed)
    n_img = scores.shape[0]
    size = min(batch_size, n_img)
    spreads = []
    for _ in range(batches):
        images = np.sort(rng.choice(n_img, size, replace=False))
        captions = images * captions_per_image + rng.integers(0, captions_per_image, size=size)
        spreads.append(np.asarray(scores[np.ix_(images, captions)], dtype=np.float64).std(axis=1).mean())
    spread = float(np.mean(spreads))
    if not spread > 1e-8:
        raise ValueError("the teacher's scores do not vary within a batch: nothing to distil")
    return spread / logit_std, spread


def context_alignment(global_vec: torch.Tensor, local: torch.Tensor, local_mask: torch.Tensor,
                      image_index: torch.Tensor, temperature: float) -> torch.Tensor:
    """SelfAlign context-level alignment, one direction: InfoNCE between a pair's global vector of
    one modality and each valid local token of the other modality; the negatives are the valid
    local tokens of every other pair in the batch (pairs of the same image excluded)."""
    u = torch.einsum("ad,btd->abt", global_vec, local) / temperature  # (B, B, T)
    eye = torch.eye(len(global_vec), dtype=torch.bool, device=u.device)
    same = image_index[:, None] == image_index[None, :]
    negative = (~same)[:, :, None] & local_mask[None, :, :]
    neg_lse = u.masked_fill(~negative, float("-inf")).flatten(1).logsumexp(dim=1)  # (B,)
    positive = u[eye]  # (B, T): own tokens
    loss = torch.logaddexp(positive, neg_lse[:, None]) - positive
    valid = local_mask.to(loss.dtype)
    return (loss * valid).sum() / valid.sum()


class LossTerm(nn.Module):
    """A named, weighted loss term computed from the model's outputs and the batch."""

    name: str = ""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def set_epoch(self, epoch: int) -> None:
        """Terms with a schedule (e.g. hinge warm-up) override this."""


class ContrastiveTerm(LossTerm):
    name = "contrastive"

    def __init__(self, weight: float, init_temperature: float, learn_temperature: bool):
        super().__init__(weight)
        log_scale = torch.tensor(math.log(1.0 / init_temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, out: dict, batch, teacher_sims: torch.Tensor | None) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return infonce(out["sims"], batch.image_index, scale)


class HingeTerm(LossTerm):
    name = "hinge"

    def __init__(self, weight: float, margin: float, max_violation: bool, sum_violation_epochs: int = 0):
        super().__init__(weight)
        self.margin, self.max_violation, self.warmup = margin, max_violation, sum_violation_epochs
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, out: dict, batch, teacher_sims: torch.Tensor | None) -> torch.Tensor:
        hardest = self.max_violation and self.epoch > self.warmup
        return hinge(out["sims"], batch.image_index, self.margin, hardest)


class KDTerm(LossTerm):
    name = "kd"

    def __init__(self, weight: float, teacher_temperature: float, student_scale: float):
        super().__init__(weight)
        self.teacher_temperature, self.student_scale = teacher_temperature, student_scale

    def forward(self, out: dict, batch, teacher_sims: torch.Tensor | None) -> torch.Tensor:
        if teacher_sims is None:
            raise ValueError("the 'kd' loss needs teacher scores for the batch")
        return listnet(out["sims"], teacher_sims, batch.image_index, self.teacher_temperature, self.student_scale)


class AlignTerm(LossTerm):
    name = "align"

    def __init__(self, weight: float, temperature: float):
        super().__init__(weight)
        self.temperature = temperature

    def forward(self, out: dict, batch, teacher_sims: torch.Tensor | None) -> torch.Tensor:
        i2t = context_alignment(out["img_emb"], out["txt_local"], out["txt_local_mask"], batch.image_index, self.temperature)
        t2i = context_alignment(out["txt_emb"], out["img_local"], out["img_local_mask"], batch.image_index, self.temperature)
        return (i2t + t2i) / 2


class Objective(nn.Module):
    """Weighted sum of loss terms; returns the total and each term's unweighted value for logging."""

    def __init__(self, terms: list[LossTerm]):
        super().__init__()
        if not terms:
            raise ValueError("the objective needs at least one loss term with a positive weight")
        self.terms = nn.ModuleList(terms)

    @property
    def needs_teacher(self) -> bool:
        return any(isinstance(t, KDTerm) for t in self.terms)

    def set_epoch(self, epoch: int) -> None:
        for term in self.terms:
            term.set_epoch(epoch)

    def forward(self, out: dict, batch, teacher_sims: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        values = {t.name: t(out, batch, teacher_sims) for t in self.terms}
        total = sum(t.weight * values[t.name] for t in self.terms)
        return total, {name: float(v.detach()) for name, v in values.items()}


def uses_teacher(cfg: LossesConfig) -> bool:
    return cfg.kd.weight > 0


def student_objective(cfg: LossesConfig) -> Objective:
    """The student's terms with a positive weight: contrastive (or hinge), KD, alignment."""
    if uses_teacher(cfg) and cfg.kd.teacher_temperature == "auto":
        raise ValueError("kd.teacher_temperature 'auto' must be resolved from the score cache first")
    c = cfg.contrastive
    terms: list[LossTerm] = []
    if c.weight > 0:
        terms.append(ContrastiveTerm(c.weight, c.init_temperature, c.learn_temperature) if c.kind == "infonce"
                     else HingeTerm(c.weight, c.margin, c.max_violation))
    if cfg.kd.weight > 0:
        terms.append(KDTerm(cfg.kd.weight, cfg.kd.teacher_temperature, cfg.kd.student_scale))
    if cfg.align.weight > 0:
        terms.append(AlignTerm(cfg.align.weight, cfg.align.temperature))
    return Objective(terms)


def teacher_objective(cfg: TeacherConfig) -> Objective:
    """VSE++ hinge on the SCAN scores, optionally warmed up with the sum of violations."""
    return Objective([HingeTerm(1.0, cfg.margin, cfg.max_violation, cfg.sum_violation_epochs)])
