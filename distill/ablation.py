"""`itr-distill ablate`: train each student variant over the configured seeds with the same budget,
evaluate them on the evaluation split, and write the ablation table (JSON + Markdown) into the run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core.config import STUDENT_VARIANTS, Config, StudentConfig
from core.devices import resolve_device
from core.distributed import Ranks, ranks_from_env
from core.io import read_json, write_json, write_text
from core.machine import machine_info
from core.run_layout import ModelDir, RunPaths
from core.towers.frozen import frozen_for
from distill.models import load_model
from distill.plan import kd_teacher_stage
from distill.stages import (
    load_split,
    stage_data,
    stage_teacher_fit,
    stage_teacher_score,
    stage_teacher_tokens,
    stage_teacher_topk,
    training_backend,
)
from distill.student_stage import stage_distill
from distill.variants import component_on, reads_teacher, variant_config
from eval.ablation_table import summarise_rows, to_markdown
from eval.evaluate import student_sims
from eval.report import write_training_curves
from eval.systems import student_result

log = logging.getLogger("itr_distill")
ROWS = {"baseline": "contrastive only", "kd": "+ in-batch KD", "cached-kd": "+ cached top-K KD",
        "selfalign": "+ SelfAlign (context + concept)", "queue": "+ momentum queues (as negatives)",
        "member": "+ MEMBER memory banks", "hierarchical": "+ hierarchical embedding (lexical local space)",
        "user-self": "+ USER self-guided enhancement", "user-guided": "+ USER guided enhancement",
        "user": "+ USER (self-guided + guided + queued negatives)", "kd+member": "+ in-batch KD + MEMBER",
        "member-token": "+ MEMBER token-level memory banks", "kd+member-token": "+ in-batch KD + token-level MEMBER",
        "kd+hierarchical": "+ in-batch KD + hierarchical embedding", "kd+user": "+ in-batch KD + USER",
        "distilled": "all (the configured student)"}


def _structure(student: StudentConfig, terms: list[str]) -> list[str]:
    """The ablation table's names for what a student is built with besides its loss `terms`."""
    parts = []
    if student.momentum.queue_size:
        readers = ", ".join(t for t in terms if t in student.momentum.queue_terms)
        parts.append(f"queue {student.momentum.queue_size} (read by {readers})")
    if student.memory_bank.slots:
        banks = "token memory banks" if student.memory_bank.level == "token" else "memory banks"
        parts.append(f"{banks} {student.memory_bank.slots}")
    if student.hierarchy.local_dim:
        parts.append(f"local space {student.hierarchy.local_dim}")
    if student.self_guided.attention_dim:
        parts.append("self-guided pooling")
    return parts


def _prerequisites(cfg: Config, variants: list[str], force: bool, resume: bool, ranks: Ranks) -> None:
    """Data, the baseline students (a top-K cache's first stage), and when a variant reads the teacher,
    the teacher and its score caches (contrastive-only rows need none of it). Under torchrun each runs
    where `run` runs it: data and the all-pairs cache on rank 0, the rest sharded."""
    ranks.on_main(stage_data, cfg, force)
    teacher = any(reads_teacher(variant_config(cfg, v)) for v in variants)
    if teacher:
        stage_teacher_fit(cfg, force, resume)
    for seed in cfg.experiment.seeds:
        stage_distill(cfg, "baseline", seed, force, resume)
    if not teacher:
        return
    kd = kd_teacher_stage(cfg)
    if kd == "teacher tokens train":
        stage_teacher_tokens(cfg, "train", force)
    elif kd is not None:
        ranks.on_main(stage_teacher_score, cfg, "train", force)
    if cfg.scores.top_k > 0:
        stage_teacher_topk(cfg, "train", force)


def stage_ablate(cfg: Config, command: str, variants: list[str] | None = None, force: bool = False,
                 resume: bool = False) -> dict[str, Any]:
    """Train and evaluate every variant (whose component the config turns on) for every seed. Under
    torchrun the trainings shard over the ranks; rank 0 alone evaluates and writes the table, and every
    rank returns it."""
    variants = variants or list(ROWS)
    unknown = [v for v in variants if v not in STUDENT_VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown} (expected some of {list(ROWS)})")
    device = resolve_device(cfg.device)
    ranks = ranks_from_env(backend=training_backend(device), run_dir=cfg.run_dir)
    _prerequisites(cfg, variants, force, resume, ranks)
    trained: dict[str, list[Path]] = {}
    for variant in variants:
        kept = STUDENT_VARIANTS[variant]
        if kept and not any(component_on(variant_config(cfg, variant), c) for c in kept):
            continue
        trained[variant] = [stage_distill(cfg, variant, seed, force, resume) for seed in cfg.experiment.seeds]
    skipped = [v for v in variants if v not in trained]
    return ranks.on_main(_write_table, cfg, command, trained, skipped, device)


def _write_table(cfg: Config, command: str, trained: dict[str, list[Path]], skipped: list[str],
                 device: torch.device) -> dict[str, Any]:
    """Evaluate each variant's students (one per seed) and write the ablation table and training curves."""
    paths, split = RunPaths(cfg.run_dir), load_split(cfg, cfg.eval.split)
    rows = []
    for variant, directories in trained.items():
        per_seed = []
        for seed, directory in zip(cfg.experiment.seeds, directories, strict=True):
            model = load_model(directory, device)
            sims = student_sims(model, split, model.image_tower.preprocess(), cfg.eval.batch_size, device, False,
                                frozen_for(model, split, paths.features, cfg.eval.batch_size, device))
            per_seed.append(student_result(directory.name, read_json(ModelDir(directory).info), sims, split,
                                           cfg.eval.folds))
            log.info("ablation %s seed %d: rsum %.1f", variant, seed, per_seed[-1].rsum)
        terms = list(per_seed[-1].losses)
        terms = terms + _structure(variant_config(cfg, variant), terms)
        rows.append({"variant": variant, "label": ROWS.get(variant, variant), "terms": terms,
                     "seeds": list(cfg.experiment.seeds), "per_seed": per_seed})
    train = cfg.student.train
    table = {"split": cfg.eval.split, "gallery_images": split.n_images, "seeds": list(cfg.experiment.seeds),
             "budget": f"{train.epochs} epochs of batch {train.batch_size}, selection {train.select}",
             "rows": summarise_rows(rows), "skipped": skipped, "machine": machine_info(), "command": command}
    write_json(paths.student_ablation, table)
    write_text(paths.student_ablation.with_suffix(".md"), to_markdown(table))
    write_training_curves({d.name: d for dirs in trained.values() for d in dirs}, paths.student_ablation_curves)
    log.info("ablation table written to %s", paths.student_ablation.with_suffix(".md"))
    return table
