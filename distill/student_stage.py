"""Training one student: its variant of the configured losses, the teacher's caches it reads, the
momentum memory it keeps, and (under torchrun) its share of every global batch.

Variants switch components of the configured student off: `baseline` trains with the contrastive
term alone, `distilled` is the configured student, and the ablation variants keep exactly one
component on top of the contrastive term (core.config.STUDENT_VARIANTS).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import SIZE_SWITCHES, STUDENT_COMPONENTS, STUDENT_VARIANTS, Config, StudentConfig
from core.data.records import CaptionSplit
from core.devices import resolve_device
from core.distributed import Ranks, local_device, ranks_from_env
from core.io import sha256_file, sha256_json
from core.schema import to_dict
from core.seeding import seed_everything
from core.towers.frozen import Frozen, frozen_for
from distill.guide import guide_identity, guide_targets
from distill.lexical import LexicalLabels
from distill.loop import fit
from distill.losses import calibrated_list_temperature, calibrated_teacher_temperature
from distill.memory import EmbeddingBank, Memory, MomentumEncoder, PairQueues
from distill.stages import load_split, topk_identity_for
from distill.terms import StepContext, student_objective, uses_lexical, uses_teacher
from distill.workspace import (RunPaths, feature_dim, new_model, save_model_info, stamp, text_source, up_to_date)
from eval.evaluate import metrics_for, student_sims
from student.encode import encode_split as student_encode
from teacher.cache import cache_identity, open_score_cache
from teacher.topk import open_topk_cache

log = logging.getLogger("itr_distill")


def component_on(student: StudentConfig, component: str) -> bool:
    if component in SIZE_SWITCHES:
        block, setting = SIZE_SWITCHES[component]
        return getattr(getattr(student, block), setting) > 0
    return getattr(student.losses, component).weight > 0


def _switched_off(student: StudentConfig, components: tuple[str, ...]) -> StudentConfig:
    for name in components:
        if name in SIZE_SWITCHES:
            block, setting = SIZE_SWITCHES[name]
            student = dataclasses.replace(student, **{block: dataclasses.replace(getattr(student, block), **{setting: 0})})
        else:
            loss = dataclasses.replace(getattr(student.losses, name), weight=0.0)
            student = dataclasses.replace(student, losses=dataclasses.replace(student.losses, **{name: loss}))
    return student


def variant_config(cfg: Config, variant: str) -> StudentConfig:
    """The configured student with every component that `variant` does not keep switched off. A
    variant that keeps the queues but none of the terms configured to read them (e.g. `queue`, or
    `user` under `queue_terms: [kd]`) has the contrastive term read them: USER's unified objective,
    in-batch and queued negatives in one contrastive loss."""
    if variant not in STUDENT_VARIANTS:
        raise ValueError(f"unknown student variant {variant!r} (expected one of {list(STUDENT_VARIANTS)})")
    kept = STUDENT_VARIANTS[variant]
    student = _switched_off(cfg.student, tuple(c for c in STUDENT_COMPONENTS if c not in kept))
    momentum = student.momentum
    if variant != "distilled" and "queue" in kept:
        readers = [t for t in momentum.queue_terms if t == "contrastive" or component_on(student, t)]
        student = dataclasses.replace(student, momentum=dataclasses.replace(momentum, queue_terms=readers or ["contrastive"]))
    return student


def _with_temperature(student: StudentConfig, term: str, tau: float) -> StudentConfig:
    losses = dataclasses.replace(student.losses, **{term: dataclasses.replace(getattr(student.losses, term),
                                                                              teacher_temperature=tau)})
    return dataclasses.replace(student, losses=losses)


def _teacher_context(cfg: Config, student: StudentConfig, paths: RunPaths, train: CaptionSplit, device: torch.device,
                     key: dict[str, Any]) -> tuple[StudentConfig, StepContext]:
    """Open the caches the student's terms read (refusing mismatching ones) and resolve 'auto'
    teacher temperatures on them; the caches' identities join the student's up-to-date key."""
    context = StepContext()
    losses = student.losses
    if uses_teacher(losses):
        identity = cache_identity(sha256_file(paths.teacher / "model.safetensors"), train.fingerprint(), train.name,
                                  train.n_images, train.n_captions)
        key["teacher"] = identity["teacher_checkpoint_sha256"]
        cache = open_score_cache(paths.scores("train"), identity)
        context.teacher = lambda images, captions: torch.from_numpy(np.ascontiguousarray(
            cache[np.ix_(images.cpu().numpy(), captions.cpu().numpy())], dtype=np.float32))
        if losses.kd.teacher_temperature == "auto":
            tau, spread = calibrated_teacher_temperature(cache, train.captions_per_image, student.train.batch_size,
                                                         losses.kd.teacher_logit_std)
            log.info("kd teacher temperature (auto): %.4f (in-batch teacher score spread %.4f -> logit std %.1f)",
                     tau, spread, losses.kd.teacher_logit_std)
            student = _with_temperature(student, "kd", tau)
    if losses.cached_kd.weight > 0:
        identity = topk_identity_for(cfg, paths, train, device)
        key["topk"] = identity
        context.lists = open_topk_cache(paths.topk_scores("train"), identity)
        if losses.cached_kd.teacher_temperature == "auto":
            tau, spread = calibrated_list_temperature([context.lists["t2i_scores"], context.lists["i2t_scores"]],
                                                      losses.cached_kd.candidates, losses.cached_kd.teacher_logit_std)
            log.info("cached_kd teacher temperature (auto): %.4f (top-%d list spread %.4f -> logit std %.1f)", tau,
                     losses.cached_kd.candidates, spread, losses.cached_kd.teacher_logit_std)
            student = _with_temperature(student, "cached_kd", tau)
    if losses.guided.weight > 0:
        key["guide"] = guide_identity(losses.guided, paths)
    return student, context


def _local_context(student: StudentConfig, context: StepContext, paths: RunPaths, train: CaptionSplit,
                   batch_size: int, device: torch.device) -> StepContext:
    """What the enhancement terms read, made once the student is known to need training: the
    lexical labels of the training captions and the guide's vectors."""
    if uses_lexical(student):
        context = dataclasses.replace(context, lexical=LexicalLabels(train.captions, train.captions_per_image))
    if student.losses.guided.weight > 0:
        context = dataclasses.replace(context, guide=guide_targets(student.losses.guided, paths, train, batch_size, device))
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


def _frozen_shared(student: torch.nn.Module, split: CaptionSplit, root: Path, batch_size: int, device: torch.device,
                   ranks: Ranks) -> Frozen:
    """Frozen-tower outputs; rank 0 computes a missing cache before the other ranks read it."""
    frozen = frozen_for(student, split, root, batch_size, device) if ranks.is_main else None
    ranks.barrier()
    return frozen if frozen is not None else frozen_for(student, split, root, batch_size, device)


def stage_distill(cfg: Config, variant: str = "distilled", seed: int | None = None, force: bool = False,
                  resume: bool = False) -> Path:
    """Train one student (a variant and a seed); reads the teacher's caches its terms need. Under
    torchrun each rank trains on its slice of every global batch and rank 0 writes the student.
    `resume` continues an interrupted training from its latest checkpoint."""
    seed = cfg.seed if seed is None else seed
    paths = RunPaths(cfg.run_dir)
    out = paths.student(variant, seed)
    device = resolve_device(cfg.device)
    ranks = ranks_from_env(backend="nccl" if device.type == "cuda" else "gloo")
    device = local_device(device)
    student_cfg = variant_config(cfg, variant)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    key: dict[str, Any] = {"data": train.fingerprint(), "student": to_dict(student_cfg), "seed": seed}
    student_cfg, context = _teacher_context(cfg, student_cfg, paths, train, device, key)
    if not force and up_to_date(out, key):
        log.info("student %s is up to date (%s)", out.name, out)
        return out
    text_model = text_source(paths, student_cfg.text_tower, train)
    seed_everything(seed)
    student = new_model("student", student_cfg, text_model, feature_dim(train))
    objective = student_objective(student_cfg)
    context = _local_context(student_cfg, context, paths, train, cfg.eval.batch_size, device)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_model_info(out, "student", student_cfg, text_model, feature_dim(train), seed=seed, variant=variant,
                        losses=[t.name for t in objective.terms])
    pre, bs = student.image_tower.preprocess(), cfg.eval.batch_size
    frozen = _frozen_shared(student, train, paths.features, bs, device, ranks)
    frozen_val = frozen_for(student, val, paths.features, bs, device) if ranks.is_main else (None, None)
    evaluate = lambda m: metrics_for(student_sims(m, val, pre, bs, device, False, frozen_val), val)
    result = fit(student, objective, train, pre, student_cfg.train, out, seed, device,
                 lr_scales={"image_tower": student_cfg.image_tower.lr_scale, "text_tower": student_cfg.text_tower.lr_scale},
                 context=context, memory=_memory(student_cfg, student, train, frozen, bs, device),
                 evaluate=evaluate, desc=f"student {out.name}", frozen=frozen, ranks=ranks,
                 identity=sha256_json(key), resume=resume)
    if ranks.is_main:
        log.info("student %s: epoch %d selected, val rsum %.1f", out.name, result.selected_epoch,
                 result.selected_metrics.get("rsum", float("nan")))
        stamp(out, key)
    return out
