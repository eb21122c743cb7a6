"""`run`: chain every stage for one config, skipping those whose outputs are up to date.

The plan (distill.plan) is worked out first: a run that cannot fit its limits is refused before any
stage works. Each stage is recorded in `<run_dir>/stages.json` as it ends: wall time, peak anonymous
and resident memory, bytes written and teacher pairs scored (core.resources).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from core.config import Config, save_config
from core.resources import StageLog
from core.run_layout import RunPaths
from distill.plan import PlanError, make_plan
from distill.stages import (
    stage_bench,
    stage_data,
    stage_eval,
    stage_export,
    stage_report,
    stage_teacher_fit,
    stage_teacher_score,
    stage_teacher_tokens,
    stage_teacher_topk,
)
from distill.student_stage import stage_distill
from teacher.model import PairCounter

log = logging.getLogger("itr_distill")


def run_pipeline(cfg: Config, command: str, force: bool = False, resume: bool = False) -> dict[str, Any]:
    """data -> teacher fit -> baseline students -> the teacher's scores for in-batch KD (the all-pairs cache,
    or the token store the online teacher reads) -> top-K cache -> distilled students -> export -> eval
    -> bench -> report. Baselines come first: one of them can be the top-K cache's first stage.
    `resume` continues interrupted trainings from their latest checkpoint."""
    started = time.perf_counter()
    plan = make_plan(cfg)
    if plan.problems:
        raise PlanError("the run is refused before any stage works:\n  " + "\n  ".join(plan.problems)
                        + "\n(`itr-distill plan CONFIG` prints the whole plan)")
    save_config(cfg, RunPaths(cfg.run_dir).config)
    stages = StageLog(RunPaths(cfg.run_dir).stage_log)

    def stage(name: str, run, *args) -> None:
        with stages.stage(name, counter=lambda: PairCounter.count):
            run(*args)

    stage("data", stage_data, cfg, force)
    stage("teacher fit", stage_teacher_fit, cfg, force, resume)
    for name in (s.name for s in plan.stages):
        if name == "distill baseline":
            for seed in cfg.experiment.seeds:
                stage(f"distill baseline seed {seed}", stage_distill, cfg, "baseline", seed, force, resume)
        elif name == "teacher tokens train":
            stage(name, stage_teacher_tokens, cfg, "train", force)
        elif name == "teacher score train":
            stage(name, stage_teacher_score, cfg, "train", force)
        elif name == "teacher score train-topk":
            stage(name, stage_teacher_topk, cfg, "train", force)
    for seed in cfg.experiment.seeds:
        stage(f"distill distilled seed {seed}", stage_distill, cfg, "distilled", seed, force, resume)
    stage("export", stage_export, cfg, None, force)
    stage("eval", stage_eval, cfg)
    stage("bench", stage_bench, cfg)
    summary = stage_report(cfg.run_dir, command)
    log.info("run finished in %.0f s: %s", time.perf_counter() - started, RunPaths(cfg.run_dir).report)
    return summary
