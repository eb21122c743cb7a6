"""Named, weighted loss terms and the objective that sums them (teacher fit and student distillation).

Each term reads the model's outputs for the batch and a `StepContext`: the teacher's scores (any
image ids against any caption ids, from the all-pairs cache or the teacher online), the queues of past pairs, the
embedding bank, the cached top-K lists, the lexical labels and the guide's vectors. A term that
needs something the run does not provide says so by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.config import LossesConfig, StudentConfig, TeacherConfig
from distill.guide import GuideTargets
from distill.lexical import LexicalLabels
from distill.losses import Beyond, candidate_listnet, hinge, infonce, listnet, soft_cross_entropy
from distill.memory import EmbeddingBank, Queued
from distill.selfalign import concept_alignment, context_alignment
from teacher.online import TeacherLookup


@dataclass
class StepContext:
    teacher: TeacherLookup | None = None
    queued: Queued | None = None
    bank: EmbeddingBank | None = None
    lists: dict[str, np.ndarray] | None = None  # top-K cache: {t2i,i2t}_{candidates,scores}
    lexical: LexicalLabels | None = None
    guide: GuideTargets | None = None


def _beyond(out: dict, image_index: torch.Tensor, queued: Queued | None) -> Beyond | None:
    """The student's scores of the batch against the queued pairs (None without queues)."""
    if queued is None or len(queued.image_index) == 0:
        return None
    excluded = image_index[:, None] == queued.image_index[None, :]
    return Beyond(out["img_emb"] @ queued.txt_emb.T.to(out["img_emb"].dtype), excluded,
                  out["txt_emb"] @ queued.img_emb.T.to(out["txt_emb"].dtype), excluded)


class LossTerm(nn.Module):
    """A named, weighted loss term computed from the model's outputs and the batch."""

    name: str = ""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight
        self.reads_queue = False  # set by student_objective for the configured momentum.queue_terms

    def queued(self, ctx: StepContext) -> Queued | None:
        """The queues, when this term reads them."""
        return ctx.queued if self.reads_queue else None

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

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return infonce(out["sims"], batch.image_index, scale, _beyond(out, batch.image_index, self.queued(ctx)))


class HingeTerm(LossTerm):
    name = "hinge"

    def __init__(self, weight: float, margin: float, max_violation: bool, sum_violation_epochs: int = 0):
        super().__init__(weight)
        self.margin, self.max_violation, self.warmup = margin, max_violation, sum_violation_epochs
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        hardest = self.max_violation and self.epoch > self.warmup
        return hinge(out["sims"], batch.image_index, self.margin, hardest)


class MatchListTerm(LossTerm):
    """Cross-entropy of each image's and each caption's list (positive first, then its hardest
    in-batch negatives): the cross-encoder teacher's matching objective."""

    name = "match"

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        return (_first_is_right(out["lists_i2t"]) + _first_is_right(out["lists_t2i"])) / 2


def _first_is_right(lists: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(lists, torch.zeros(len(lists), dtype=torch.long, device=lists.device))


class KDTerm(LossTerm):
    """In-batch ListNet, extended over the queued pairs when it reads the queues."""

    name = "kd"

    def __init__(self, weight: float, teacher_temperature: float, student_scale: float):
        super().__init__(weight)
        self.teacher_temperature, self.student_scale = teacher_temperature, student_scale

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        if ctx.teacher is None:
            raise ValueError("the 'kd' loss needs teacher scores for the batch")
        device = out["sims"].device
        teacher = ctx.teacher(batch.image_index, batch.caption_index).to(device)
        q = self.queued(ctx)
        student_beyond = _beyond(out, batch.image_index, q)
        teacher_beyond = None
        if student_beyond is not None:
            teacher_beyond = Beyond(ctx.teacher(batch.image_index, q.caption_index).to(device), student_beyond.i2t_excluded,
                                    ctx.teacher(q.image_index, batch.caption_index).T.to(device), student_beyond.t2i_excluded)
        return listnet(out["sims"], teacher, batch.image_index, self.teacher_temperature, self.student_scale,
                       student_beyond, teacher_beyond)


class CachedKDTerm(LossTerm):
    """ListNet over each batch caption's cached top-K images and each batch image's top-K captions;
    the candidates' embeddings come from the momentum embedding bank."""

    name = "cached_kd"

    def __init__(self, weight: float, candidates: int, teacher_temperature: float, student_scale: float):
        super().__init__(weight)
        self.candidates, self.teacher_temperature, self.student_scale = candidates, teacher_temperature, student_scale

    def _direction(self, query: torch.Tensor, ids: torch.Tensor, lists: dict[str, np.ndarray], direction: str,
                   bank: torch.Tensor) -> torch.Tensor:
        rows = ids.cpu().numpy()
        candidates = torch.from_numpy(np.asarray(lists[f"{direction}_candidates"][rows, :self.candidates]))
        scores = torch.from_numpy(np.asarray(lists[f"{direction}_scores"][rows, :self.candidates], dtype=np.float32))
        return candidate_listnet(query, bank[candidates.to(bank.device)], scores.to(query.device),
                                 self.teacher_temperature, self.student_scale)

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        if ctx.lists is None or ctx.bank is None:
            raise ValueError("the 'cached_kd' loss needs the top-K score cache and the embedding bank")
        t2i = self._direction(out["txt_emb"], batch.caption_index, ctx.lists, "t2i", ctx.bank.images)
        i2t = self._direction(out["img_emb"], batch.image_index, ctx.lists, "i2t", ctx.bank.captions)
        return (t2i + i2t) / 2


class AlignTerm(LossTerm):
    """SelfAlign context level, both directions; queued local tokens join the negatives when it reads the queues."""

    name = "align"

    def __init__(self, weight: float, temperature: float):
        super().__init__(weight)
        self.temperature = temperature

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        q = self.queued(ctx)
        i2t = context_alignment(out["img_global"], out["txt_local"], out["txt_local_mask"], batch.image_index,
                                self.temperature, *((q.txt_tokens, q.txt_token_image) if q else ()))
        t2i = context_alignment(out["txt_global"], out["img_local"], out["img_local_mask"], batch.image_index,
                                self.temperature, *((q.img_tokens, q.img_token_image) if q else ()))
        return (i2t + t2i) / 2


class ConceptTerm(LossTerm):
    """SelfAlign concept level with learnable prototypes (trained with the student, not exported)."""

    name = "concept"

    def __init__(self, weight: float, prototypes: int, dim: int, temperature: float, epsilon: float,
                 iterations: int, directions: str):
        super().__init__(weight)
        self.prototypes = nn.Parameter(torch.randn(prototypes, dim) / math.sqrt(dim))
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations
        self.directions = ("t2i", "i2t") if directions == "both" else (directions,)

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        sides = {"t2i": ("txt", "img"), "i2t": ("img", "txt")}  # (predicting tokens, coded tokens)
        losses = [concept_alignment(out[f"{q}_local"], out[f"{q}_local_mask"], out[f"{c}_local"], out[f"{c}_local_mask"],
                                    self.prototypes, self.temperature, self.epsilon, self.iterations)
                  for q, c in (sides[d] for d in self.directions)]
        return sum(losses) / len(losses)


class LexicalTerm(LossTerm):
    """Hierarchical embedding's local space: ListNet of its in-batch scores towards the lexical labels."""

    name = "lexical"

    def __init__(self, weight: float, label_temperature: float, student_scale: float):
        super().__init__(weight)
        self.label_temperature, self.student_scale = label_temperature, student_scale

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        if ctx.lexical is None or "img_lex" not in out:
            raise ValueError("the 'lexical' loss needs the lexical labels and a student with a local space")
        labels = ctx.lexical(batch.image_index, batch.caption_index).to(out["sims"].device)
        return listnet(out["img_lex"] @ out["txt_lex"].T, labels, batch.image_index, self.label_temperature,
                       self.student_scale)


def _relational(student: torch.Tensor, guide: torch.Tensor, excluded: torch.Tensor, temperature: float,
                scale: float) -> torch.Tensor:
    """ListNet of each item's similarities to the batch's other items towards the guide's; rows with
    no candidate left are skipped."""
    keep = ~excluded.all(dim=1)
    target = (guide @ guide.T / temperature).masked_fill(excluded, float("-inf"))[keep]
    logits = (student @ student.T * scale).masked_fill(excluded, float("-inf"))[keep]
    return soft_cross_entropy(target, logits) if len(target) else student.sum() * 0.0


class GuidedTerm(LossTerm):
    """USER's guided enhancement: the student's image-image and caption-caption similarities in the
    batch follow the frozen guide's (duplicates of one image and each item itself left out)."""

    name = "guided"

    def __init__(self, weight: float, temperature: float, student_scale: float):
        super().__init__(weight)
        self.temperature, self.student_scale = temperature, student_scale

    def forward(self, out: dict, batch, ctx: StepContext) -> torch.Tensor:
        if ctx.guide is None:
            raise ValueError("the 'guided' loss needs the guide's vectors")
        device = out["img_emb"].device
        images = ctx.guide.images[batch.image_index.to(ctx.guide.images.device)].to(device)
        captions = ctx.guide.captions[batch.caption_index.to(ctx.guide.captions.device)].to(device)
        same_image = batch.image_index[:, None] == batch.image_index[None, :]
        itself = torch.eye(len(batch.caption_index), dtype=torch.bool, device=device)
        return (_relational(out["img_emb"], images.to(out["img_emb"].dtype), same_image, self.temperature,
                            self.student_scale)
                + _relational(out["txt_emb"], captions.to(out["txt_emb"].dtype), itself, self.temperature,
                              self.student_scale)) / 2


class Objective(nn.Module):
    """Weighted sum of loss terms; returns the total and each term's unweighted value for logging."""

    def __init__(self, terms: list[LossTerm]):
        super().__init__()
        if not terms:
            raise ValueError("the objective needs at least one loss term with a positive weight")
        self.terms = nn.ModuleList(terms)

    def _has(self, kind: type) -> bool:
        return any(isinstance(t, kind) for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        return self._has(KDTerm)

    @property
    def needs_lists(self) -> bool:
        return self._has(CachedKDTerm)

    def set_epoch(self, epoch: int) -> None:
        for term in self.terms:
            term.set_epoch(epoch)

    def forward(self, out: dict, batch, ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        ctx = ctx or StepContext()
        values = {t.name: t(out, batch, ctx) for t in self.terms}
        total = sum(t.weight * values[t.name] for t in self.terms)
        return total, {name: float(v.detach()) for name, v in values.items()}


def uses_teacher(cfg: LossesConfig) -> bool:
    """Whether the student needs the teacher's scores of its batches (in-batch KD)."""
    return cfg.kd.weight > 0


def uses_lexical(cfg: StudentConfig) -> bool:
    """Whether the student trains a local space on lexical labels."""
    return cfg.hierarchy.local_dim > 0 and cfg.losses.lexical.weight > 0


def student_objective(student: StudentConfig) -> Objective:
    """The student's terms with a positive weight: contrastive (or hinge), KD, cached KD, alignment,
    concepts, the local space's lexical term, the guided term; those named in `momentum.queue_terms`
    read the momentum queues (when the run keeps any)."""
    cfg = student.losses
    for name, kd in (("kd", cfg.kd), ("cached_kd", cfg.cached_kd)):
        if kd.weight > 0 and kd.teacher_temperature == "auto":
            raise ValueError(f"{name}.teacher_temperature 'auto' must be resolved from the score cache first")
    c = cfg.contrastive
    terms: list[LossTerm] = []
    if c.weight > 0:
        terms.append(ContrastiveTerm(c.weight, c.init_temperature, c.learn_temperature) if c.kind == "infonce"
                     else HingeTerm(c.weight, c.margin, c.max_violation))
    if cfg.kd.weight > 0:
        terms.append(KDTerm(cfg.kd.weight, cfg.kd.teacher_temperature, cfg.kd.student_scale))
    ck = cfg.cached_kd
    if ck.weight > 0:
        terms.append(CachedKDTerm(ck.weight, ck.candidates, ck.teacher_temperature, ck.student_scale))
    if cfg.align.weight > 0:
        terms.append(AlignTerm(cfg.align.weight, cfg.align.temperature))
    cc = cfg.concept
    if cc.weight > 0:
        terms.append(ConceptTerm(cc.weight, cc.prototypes, student.embed_dim, cc.temperature, cc.epsilon,
                                 cc.sinkhorn_iterations, cc.directions))
    if uses_lexical(student):
        terms.append(LexicalTerm(cfg.lexical.weight, cfg.lexical.label_temperature, cfg.lexical.student_scale))
    if cfg.guided.weight > 0:
        terms.append(GuidedTerm(cfg.guided.weight, cfg.guided.temperature, cfg.guided.student_scale))
    for term in terms:
        term.reads_queue = term.name in student.momentum.queue_terms
    return Objective(terms)


def teacher_objective(cfg: TeacherConfig) -> Objective:
    """VSE++ hinge on the teacher's scores of the batch (SCAN / IMRAM; the global first stage of a
    cross-encoder, which adds its list cross-entropy), optionally warmed up with the sum of violations."""
    hinge_term = HingeTerm(1.0, cfg.margin, cfg.max_violation, cfg.sum_violation_epochs)
    return Objective([hinge_term, MatchListTerm(1.0)] if cfg.matching == "cross" else [hinge_term])
