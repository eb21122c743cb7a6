"""`run`: chain every stage for one config, skipping those whose outputs are up to date."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.config import Config, save_config
from distill.stages import (stage_bench, stage_data, stage_eval, stage_export, stage_report, stage_teacher_fit,
                            stage_teacher_score, stage_teacher_topk)
from distill.student_stage import stage_distill, variant_config
from distill.terms import uses_teacher

log = logging.getLogger("itr_distill")


def run_pipeline(cfg: Config, command: str, force: bool = False, resume: bool = False) -> dict[str, Any]:
    """data -> teacher fit -> baseline students -> teacher score caches -> distilled students -> export
    -> eval -> bench -> report. Baselines come first: one of them can be the top-K cache's first stage.
    `resume` continues interrupted trainings from their latest checkpoint."""
    started = time.perf_counter()
    save_config(cfg, Path(cfg.run_dir) / "config.yaml")
    stage_data(cfg, force)
    stage_teacher_fit(cfg, force, resume)
    if cfg.experiment.baseline:
        for seed in cfg.experiment.seeds:
            stage_distill(cfg, "baseline", seed, force, resume)
    if uses_teacher(variant_config(cfg, "distilled").losses):
        stage_teacher_score(cfg, "train", force)
    if cfg.scores.top_k > 0:
        stage_teacher_topk(cfg, "train", force)
    for seed in cfg.experiment.seeds:
        stage_distill(cfg, "distilled", seed, force, resume)
    stage_export(cfg, force=force)
    stage_eval(cfg)
    stage_bench(cfg)
    summary = stage_report(cfg.run_dir, command)
    log.info("run finished in %.0f s: %s", time.perf_counter() - started, Path(cfg.run_dir) / "report.md")
    return summary
