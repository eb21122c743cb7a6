"""Training one student: its variant of the configured losses, the teacher's caches it reads, the
momentum memory it keeps, and (under torchrun) its share of every global batch.

Variants (distill.variants) switch components of the configured student off.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from core.config import Config, StudentConfig
from core.data.records import CaptionSplit
from core.devices import resolve_device
from core.distributed import Ranks, local_device, ranks_from_env
from core.io import sha256_json
from core.run_layout import RunPaths, stamp, up_to_date
from core.schema import stage_key
from core.seeding import seed_everything
from core.towers.frozen import Frozen, frozen_for
from distill.guide import guide_identity, guide_targets
from distill.lexical import LexicalLabels
from distill.loop import Recipe, RunSpec, TrainData, fit
from distill.losses import calibrated_list_temperature, calibrated_teacher_temperature
from distill.memory import EmbeddingBank, Memory, MomentumEncoder, PairQueues
from distill.models import feature_dim, new_model, save_model_info
from distill.plan import kd_source, require
from distill.stages import (
    frozen_shared,
    load_split,
    shared_text_source,
    single_teacher_tokens,
    teacher_hash,
    teacher_tokens,
    topk_identity_for,
    training_backend,
)
from distill.terms import StepContext, student_objective, uses_lexical, uses_teacher
from distill.variants import variant_config
from eval.evaluate import metrics_for, student_sims
from student.encode import encode_split as student_encode
from teacher.cache import cache_identity, open_score_cache
from teacher.online import OnlineTeacher, TeacherLookup, dense_lookup
from teacher.topk import open_topk_cache

log = logging.getLogger("itr_distill")


def _with_temperature(student: StudentConfig, term: str, tau: float) -> StudentConfig:
    losses = dataclasses.replace(student.losses, **{term: dataclasses.replace(getattr(student.losses, term),
                                                                              teacher_temperature=tau)})
    return dataclasses.replace(student, losses=losses)


def _teacher_key(cfg: Config, student: StudentConfig, paths: RunPaths, train: CaptionSplit,
                 device: torch.device) -> dict[str, Any]:
    """What the student's teacher-fed terms depend on, for its up-to-date key: the teacher checkpoint
    (either KD source gives the same scores) and the top-K cache's identity."""
    key: dict[str, Any] = {}
    if uses_teacher(student.losses):
        key["teacher"] = teacher_hash(cfg)
    if student.losses.cached_kd.weight > 0:
        key["topk"] = topk_identity_for(cfg, paths, train, device)
    if student.losses.guided.weight > 0:
        key["guide"] = guide_identity(student.losses.guided, paths)
    return key


def _kd_lookup(cfg: Config, paths: RunPaths, train: CaptionSplit, device: torch.device, ranks: Ranks) -> TeacherLookup:
    """In-batch KD's teacher scores: the all-pairs cache, or the frozen teacher online (scores.kd_source)."""
    if kd_source(cfg, train.n_images, train.n_captions) == "cache":
        identity = cache_identity(teacher_hash(cfg), train.fingerprint(), train.name, train.n_images, train.n_captions)
        log.info("kd: teacher scores from the all-pairs cache %s", paths.scores("train"))
        return dense_lookup(open_score_cache(paths.scores("train"), identity))
    teacher, store = teacher_tokens(cfg, "train", train, device, ranks)
    log.info("kd: teacher scores online, from its token store %s", paths.teacher_tokens("train"))
    return OnlineTeacher(teacher, store, cfg.scores.bf16, ranks)


def _teacher_context(cfg: Config, student: StudentConfig, paths: RunPaths, train: CaptionSplit, device: torch.device,
                     ranks: Ranks) -> tuple[StudentConfig, StepContext]:
    """Open what the student's terms read (refusing caches made for another run) and resolve 'auto'
    teacher temperatures on it."""
    context = StepContext()
    losses = student.losses
    if uses_teacher(losses):
        context.teacher = _kd_lookup(cfg, paths, train, device, ranks)
        if losses.kd.teacher_temperature == "auto":
            tau, spread = calibrated_teacher_temperature(context.teacher, train.n_images, train.captions_per_image,
                                                         student.train.batch_size, losses.kd.teacher_logit_std)
            log.info("kd teacher temperature (auto): %.4f (in-batch teacher score spread %.4f -> logit std %.1f)",
                     tau, spread, losses.kd.teacher_logit_std)
            student = _with_temperature(student, "kd", tau)
    if losses.cached_kd.weight > 0:
        context.lists = open_topk_cache(paths.topk_scores("train"), topk_identity_for(cfg, paths, train, device))
        if losses.cached_kd.teacher_temperature == "auto":
            tau, spread = calibrated_list_temperature([context.lists["t2i_scores"], context.lists["i2t_scores"]],
                                                      losses.cached_kd.candidates, losses.cached_kd.teacher_logit_std)
            log.info("cached_kd teacher temperature (auto): %.4f (top-%d list spread %.4f -> logit std %.1f)", tau,
                     losses.cached_kd.candidates, spread, losses.cached_kd.teacher_logit_std)
            student = _with_temperature(student, "cached_kd", tau)
    return student, context


def _local_context(cfg: Config, student: StudentConfig, context: StepContext, train: CaptionSplit,
                   device: torch.device, ranks: Ranks) -> StepContext:
    """What the enhancement terms read, made once the student is known to need training: the
    lexical labels of the training captions and the guide's vectors."""
    if uses_lexical(student):
        context = dataclasses.replace(context, lexical=LexicalLabels(train.captions, train.captions_per_image))
    guided = student.losses.guided
    if guided.weight > 0:
        # the fitted teacher's store (not an ensemble's), opened on every rank since building it is collective
        store = single_teacher_tokens(cfg, "train", train, device, ranks)[1] if guided.source == "teacher" else None
        context = dataclasses.replace(context, guide=guide_targets(guided, RunPaths(cfg.run_dir), train,
                                                                   cfg.eval.batch_size, device, store))
    return context


def _memory(student_cfg: StudentConfig, student: torch.nn.Module, train: CaptionSplit, frozen: Frozen,
            batch_size: int, device: torch.device) -> Memory | None:
    """The momentum encoder with its queues, and for cached KD the bank filled by a first pass; with
    memory banks, the keys that move them. The momentum copy is kept only for queues and bank: memory
    banks alone follow the student's own (detached) embeddings."""
    momentum, with_bank, banks = student_cfg.momentum, student_cfg.losses.cached_kd.weight > 0, student_cfg.memory_bank
    if momentum.queue_size == 0 and not with_bank and not banks.slots:
        return None
    tokens = momentum.token_queue_size if "align" in momentum.queue_terms and student_cfg.losses.align.weight > 0 else 0
    queues = (PairQueues(momentum.queue_size, tokens, student_cfg.embedding_dim, student_cfg.embed_dim, device)
              if momentum.queue_size else None)
    bank = None
    if with_bank:
        images, captions = student_encode(student, train, student.image_tower.preprocess(), batch_size, device,
                                          progress=False, frozen=frozen)
        bank = EmbeddingBank(torch.from_numpy(images).to(device), torch.from_numpy(captions).to(device))
    coefficient = momentum.coefficient if queues is not None or bank is not None else 0.0
    return Memory(MomentumEncoder(student, coefficient), queues, bank, memory_banks=banks.slots > 0)


def stage_distill(cfg: Config, variant: str = "distilled", seed: int | None = None, force: bool = False,
                  resume: bool = False) -> Path:
    """Train one student (a variant and a seed); reads the teacher's caches its terms need. Under
    torchrun each rank trains on its slice of every global batch and rank 0 writes the student.
    `resume` continues an interrupted training from its latest checkpoint."""
    seed = cfg.seed if seed is None else seed
    paths = RunPaths(cfg.run_dir)
    out = paths.student(variant, seed)
    device = resolve_device(cfg.device)
    ranks = ranks_from_env(backend=training_backend(device), run_dir=cfg.run_dir)
    device = local_device(device)
    require(cfg, f"distill {variant}")
    student_cfg = variant_config(cfg, variant)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    key: dict[str, Any] = {"data": train.fingerprint(), "student": stage_key(student_cfg), "seed": seed,
                           **_teacher_key(cfg, student_cfg, paths, train, device)}
    if not force and up_to_date(out, key):
        log.info("student %s is up to date (%s)", out.name, out)
        return out
    student_cfg, context = _teacher_context(cfg, student_cfg, paths, train, device, ranks)
    text_model = shared_text_source(paths, student_cfg.text_tower, train, ranks)
    seed_everything(seed)
    student = new_model("student", student_cfg, text_model, feature_dim(train)).to(device)  # built on the CPU
    objective = student_objective(student_cfg)
    context = _local_context(cfg, student_cfg, context, train, device, ranks)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_model_info(out, "student", student_cfg, text_model, feature_dim(train), seed=seed, variant=variant,
                        losses=[t.name for t in objective.terms])
    pre, bs = student.image_tower.preprocess(), cfg.eval.batch_size
    frozen = frozen_shared(student, train, paths.features, bs, device, ranks)
    frozen_val = frozen_for(student, val, paths.features, bs, device) if ranks.is_main else (None, None)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return metrics_for(student_sims(model, val, pre, bs, device, False, frozen_val), val)

    recipe = Recipe(objective, context, _memory(student_cfg, student, train, frozen, bs, device),
                    lr_scales={"image_tower": student_cfg.image_tower.lr_scale, "text_tower": student_cfg.text_tower.lr_scale})
    run = RunSpec(out, seed, device, ranks, identity=sha256_json(key), resume=resume, desc=f"student {out.name}")
    result = fit(student, recipe, TrainData(train, pre, frozen, paths.images), student_cfg.train, run, evaluate)
    if ranks.is_main:
        log.info("student %s: epoch %d selected, val rsum %.1f", out.name, result.selected_epoch,
                 result.selected_metrics.get("rsum", float("nan")))
        stamp(out, key)
    return out
