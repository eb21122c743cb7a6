"""`run`: chain every stage for one config, skipping those whose outputs are up to date.

The plan (distill.plan) is worked out first: a run that cannot fit its limits is refused before any
stage works. Each stage is recorded in `<run_dir>/stages.json` as it ends: wall time, peak anonymous
and resident memory, bytes written and teacher pairs scored (core.resources).

Under torchrun each stage runs where it belongs: the stages that shard (teacher fit, the teacher's token
store, top-K scoring, every student) on every rank; the others (data, all-pairs scoring, export, eval,
bench, report) on rank 0 alone while the other ranks wait at a barrier. Rank 0 alone writes the config
and the stage log (its own measurements).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from core.config import Config, save_config
from core.devices import resolve_device
from core.distributed import ranks_from_env
from core.resources import StageLog
from core.run_layout import RunPaths
from distill.packing import stage_pack
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
    training_backend,
)
from distill.student_stage import stage_distill
from teacher.model import PairCounter

log = logging.getLogger("itr_distill")


def run_pipeline(cfg: Config, command: str, force: bool = False, resume: bool = False) -> dict[str, Any]:
    """data -> teacher fit -> baseline students -> the teacher's scores for in-batch KD (the all-pairs cache,
    or the token store the online teacher reads) -> top-K cache -> distilled students -> (their pack) -> export -> eval
    -> bench -> report. Baselines come first: one of them can be the top-K cache's first stage.
    `resume` continues interrupted trainings from their latest checkpoint. Under torchrun, see the module's
    docstring: every rank returns rank 0's summary."""
    started = time.perf_counter()
    ranks = ranks_from_env(backend=training_backend(resolve_device(cfg.device)), run_dir=cfg.run_dir)
    plan = make_plan(cfg)
    problems = ranks.all_objects(plan.problems)[0]  # rank 0's plan decides for every rank
    if problems:
        raise PlanError("the run is refused before any stage works:\n  " + "\n  ".join(problems)
                        + "\n(`itr-distill plan CONFIG` prints the whole plan)")
    stages = StageLog(RunPaths(cfg.run_dir).stage_log) if ranks.is_main else None
    if ranks.is_main:
        save_config(cfg, RunPaths(cfg.run_dir).config)

    def stage(name: str, run, *args, sharded: bool = False) -> None:
        """Run a stage on every rank (`sharded`) or on rank 0 alone; every rank leaves it together."""
        if stages is not None:
            with stages.stage(name, counter=lambda: PairCounter.count):
                run(*args)
        elif sharded:
            run(*args)
        ranks.barrier()

    stage("data", stage_data, cfg, force)
    stage("teacher fit", stage_teacher_fit, cfg, force, resume, sharded=True)
    for name in (s.name for s in plan.stages):
        if name == "distill baseline":
            for seed in cfg.experiment.seeds:
                stage(f"distill baseline seed {seed}", stage_distill, cfg, "baseline", seed, force, resume, sharded=True)
        elif name == "teacher tokens train":
            stage(name, stage_teacher_tokens, cfg, "train", force, sharded=True)
        elif name == "teacher score train":
            stage(name, stage_teacher_score, cfg, "train", force)
        elif name == "teacher score train-topk":
            stage(name, stage_teacher_topk, cfg, "train", force, sharded=True)
    for seed in cfg.experiment.seeds:
        stage(f"distill distilled seed {seed}", stage_distill, cfg, "distilled", seed, force, resume, sharded=True)
    if cfg.experiment.pack:
        stage("pack", stage_pack, cfg, "distilled", None, force)
    stage("export", stage_export, cfg, RunPaths(cfg.run_dir).pack("distilled") if cfg.experiment.pack else None, force)
    stage("eval", stage_eval, cfg)
    stage("bench", stage_bench, cfg)
    summary = stage_report(cfg.run_dir, command) if ranks.is_main else None
    if ranks.is_main:
        log.info("run finished in %.0f s: %s", time.perf_counter() - started, RunPaths(cfg.run_dir).report)
    return ranks.all_objects(summary)[0]
