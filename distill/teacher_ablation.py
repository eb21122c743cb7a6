"""`itr-distill ablate-teachers`: fit each named teacher variant (the configured teacher with dotted
`teacher.*` overrides, `experiment.teacher_variants`) over seeds, evaluate it on the evaluation split,
and write the table (JSON + Markdown) beside the student ablation.

Each variant fits in its own run directory (`distill.teacher_runs`); the configured teacher at the
run's seed is the run's own `teacher/` (fitted once, by `run` or here).
Selection uses the configured val split, never the one the table reports.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config
from core.data.records import CaptionSplit
from core.devices import resolve_device
from core.distributed import ranks_from_env
from core.io import read_json, write_json, write_text
from core.machine import machine_info
from core.run_layout import ModelDir, RunPaths
from core.towers.frozen import frozen_for
from distill.models import load_model
from distill.stages import load_split, stage_teacher_fit, training_backend
from distill.teacher_runs import REFERENCE, variant_run
from eval.ablation_table import summarise_rows, to_markdown
from eval.ensemble import fit_ensemble
from eval.evaluate import teacher_split_metrics
from eval.metrics import retrieval_metrics
from eval.records import SystemResult
from eval.report import write_training_curves
from teacher.scoring import encode_split as teacher_encode
from teacher.scoring import score_all

log = logging.getLogger("itr_distill")


@dataclass(frozen=True)
class Fit:
    """One variant's fit at one seed: its teacher directory and the seconds the fit (or finding it
    up to date) took."""

    seed: int
    out: Path
    seconds: float


def stage_ablate_teachers(cfg: Config, command: str, names: list[str] | None = None, seeds: list[int] | None = None,
                          force: bool = False, resume: bool = False) -> dict[str, Any]:
    """Fit and evaluate every teacher variant (the configured teacher first) for every seed, then the
    ensembles of fitted variants (`--force` refits the variants named, never an ensemble's members;
    `resume` continues any interrupted fit, members included, from its latest checkpoint).
    Under torchrun every fit shards over the ranks; rank 0 alone evaluates and writes the table, and
    every rank returns it."""
    ensembles = cfg.experiment.teacher_ensembles
    known = [REFERENCE, *cfg.experiment.teacher_variants, *ensembles]
    names = names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown teacher variant(s) {unknown} (experiment.teacher_variants and "
                         f"teacher_ensembles name {known[1:]})")
    seeds = seeds or list(cfg.experiment.seeds)
    device = resolve_device(cfg.device)
    ranks = ranks_from_env(backend=training_backend(device), run_dir=cfg.run_dir)
    fits = _fit_variants(cfg, [n for n in names if n not in ensembles], seeds, force, resume)
    members = dict.fromkeys(m for n in names if n in ensembles for m in ensembles[n] if m not in names)
    _fit_variants(cfg, list(members), seeds, False, resume)  # so rank 0 alone never fits below
    return ranks.on_main(_write_table, cfg, command, fits, [n for n in names if n in ensembles], seeds, device)


def _fit_variants(cfg: Config, names: list[str], seeds: list[int], force: bool, resume: bool) -> dict[str, list[Fit]]:
    """Each named variant fitted (or found up to date) at each seed, with the seconds it took."""
    fits: dict[str, list[Fit]] = {}
    for name in names:
        for seed in seeds:
            start = time.perf_counter()
            out = stage_teacher_fit(variant_run(cfg, name, seed), force, resume)
            fits.setdefault(name, []).append(Fit(seed, out, time.perf_counter() - start))
    return fits


def _write_table(cfg: Config, command: str, fits: dict[str, list[Fit]], ensembles: list[str], seeds: list[int],
                 device: torch.device) -> dict[str, Any]:
    """Evaluate the fitted variants and the named ensembles on the evaluation split; write the table."""
    split = load_split(cfg, cfg.eval.split)
    rows = []
    for name, runs in fits.items():
        per_seed, selection = [], []
        for run in runs:
            teacher = load_model(run.out, device)
            features = RunPaths(variant_run(cfg, name, run.seed).run_dir).features
            frozen = frozen_for(teacher, split, features, cfg.eval.batch_size, device)
            metrics, scored = teacher_split_metrics(teacher, split, teacher.image_tower.preprocess(),
                                                    cfg.eval.batch_size, device, False, frozen,
                                                    cfg.eval.protocols[0])  # the table's protocol
            per_seed.append(SystemResult(f"{name}-seed{run.seed}", name, run.seed, metrics, matching=teacher.label,
                                         scored=scored))
            training = read_json(ModelDir(run.out).training)
            chosen = next(h for h in training["history"] if h["epoch"] == training["selected_epoch"])
            selection.append({"epoch": training["selected_epoch"], "rsum": chosen.get("val", {}).get("rsum")})
            log.info("teacher ablation %s seed %d: rsum %.1f", name, run.seed, per_seed[-1].rsum)
        overrides = cfg.experiment.teacher_variants.get(name, []) or ["as configured"]
        if scored != "every pair":
            overrides = [*overrides, f"evaluated on the {scored}"]
        rows.append({"variant": name, "label": name, "terms": overrides, "seeds": seeds,
                     "per_seed": per_seed, "selection": selection, "fit_seconds": [r.seconds for r in runs]})
    rows += [_ensemble_row(cfg, name, seeds, split, device) for name in ensembles]
    train = cfg.teacher.train
    table = {"split": cfg.eval.split, "gallery_images": split.n_images, "seeds": seeds,
             "budget": f"at most {train.epochs} epochs of batch {train.batch_size} unless overridden, "
                       f"selection {train.select} on `{cfg.data.splits.val}`",
             "rows": summarise_rows(rows, reference=REFERENCE), "skipped": [], "machine": machine_info(),
             "command": command}
    out = RunPaths(cfg.run_dir).teacher_ablation
    write_json(out, table)
    write_text(out.with_suffix(".md"), to_markdown(table, subject="Teacher", reference="the configured teacher's row"))
    write_training_curves({f"{name}-seed{r.seed}": r.out for name, runs in fits.items() for r in runs},
                          RunPaths(cfg.run_dir).teacher_ablation_curves)
    log.info("teacher ablation table written to %s", out.with_suffix(".md"))
    return table


def variant_scores(cfg: Config, name: str, seed: int, split: CaptionSplit, device: torch.device) -> np.ndarray:
    """Every-pair scores of a split by one fitted teacher variant (fitted here when missing)."""
    variant = variant_run(cfg, name, seed)
    teacher = load_model(stage_teacher_fit(variant), device)
    frozen = frozen_for(teacher, split, RunPaths(variant.run_dir).features, cfg.eval.batch_size, device)
    images, captions = teacher_encode(teacher, split, teacher.image_tower.preprocess(), cfg.eval.batch_size, device,
                                      False, frozen)
    return score_all(teacher, images, captions, progress=False)


def _ensemble_row(cfg: Config, name: str, seeds: list[int], split: CaptionSplit, device: torch.device) -> dict[str, Any]:
    """An ensemble's row: per seed, its members' scores standardised and weighted as the selection
    split prefers, evaluated on the eval split (its members are fitted already, so nothing fits here)."""
    members = cfg.experiment.teacher_ensembles[name]
    selection_split = load_split(cfg, "val")
    per_seed, selection = [], []
    for seed in seeds:
        chosen = fit_ensemble([variant_scores(cfg, m, seed, selection_split, device) for m in members],
                              selection_split.captions_per_image)
        sims = chosen.combine([variant_scores(cfg, m, seed, split, device) for m in members])
        per_seed.append(SystemResult(f"{name}-seed{seed}", name, seed,
                                     retrieval_metrics(sims, split.captions_per_image, cfg.eval.protocols[0])))
        selection.append({"weights": dict(zip(members, chosen.weights, strict=True)), "rsum": chosen.selection_rsum})
        log.info("teacher ensemble %s seed %d: weights %s, rsum %.1f", name, seed, selection[-1]["weights"],
                 per_seed[-1].rsum)
    weights = "; ".join(" + ".join(f"{w:.1f} {m}" for m, w in s["weights"].items()) for s in selection)
    return {"variant": name, "label": name, "terms": [f"ensemble of {', '.join(members)}",
                                                       f"weights (per seed) {weights}"],
            "seeds": seeds, "per_seed": per_seed, "selection": selection, "fit_seconds": []}
