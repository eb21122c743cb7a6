"""Each kind of system evaluated into its `SystemResult`: the teacher from its token store, a student,
the teacher re-ranking a student's top-K, an ONNX variant against its PyTorch source."""
from __future__ import annotations

from typing import Any

import numpy as np

from core.data.records import CaptionSplit
from eval.evaluate import metrics_for_folds, onnx_sims, teacher_blocks, teacher_metrics_by_folds
from eval.metrics import block_metrics, protocols
from eval.records import OnnxParity, SystemResult
from eval.rerank import rerank_metrics, with_first_stage
from teacher.scoring import Side, Teacher, candidate_scorer
from teacher.topk import ScorePart, scores_from_dense

Folds = int | list[int]  # `eval.folds`: one protocol or several, the first the one `SystemResult.metrics` holds


def teacher_result(teacher: Teacher, images: Side, captions: Side, split: CaptionSplit, seed: int, folds: Folds,
                   block_gib: float, bf16: bool, token_dtype: str) -> tuple[SystemResult, ScorePart]:
    """The teacher's result, and what re-ranking and the examples score pairs with: lookups into the whole
    matrix when its metrics scored every pair of it (protocol 1), else the teacher scoring the pairs asked for."""
    if teacher.eval_top_k or 1 not in protocols(folds):
        by_folds, scored = teacher_metrics_by_folds(teacher, images, captions, split, folds, block_gib, bf16)
        scorer = candidate_scorer(teacher, images, captions, bf16)
    else:
        blocks = teacher_blocks(teacher, images, captions, split, folds, block_gib, bf16)
        by_folds, scored = block_metrics(blocks, split.captions_per_image, folds), "every pair"
        scorer = scores_from_dense(blocks[1][0])
    return SystemResult.of_folds("teacher", "teacher", seed, by_folds, matching=teacher.label, scored=scored,
                                 token_dtype=token_dtype), scorer


def student_result(name: str, info: dict[str, Any], sims: np.ndarray, split: CaptionSplit, folds: Folds) -> SystemResult:
    """A student from its similarity matrix; `info` is its `model.json` (variant, seed, loss terms)."""
    return SystemResult.of_folds(name, info["variant"], info["seed"], metrics_for_folds(sims, split, folds),
                                 losses=info["losses"])


def rerank_results(student: SystemResult, sims: np.ndarray, teacher: ScorePart, split: CaptionSplit, ks: list[int],
                   student_weight: float, folds: Folds) -> list[SystemResult]:
    """The teacher (`teacher_result`'s scorer) re-ranking the student's top-K (per K), fused with
    `student_weight` x the student's score; under each protocol the teacher re-ranks within each fold's block."""
    fused = with_first_stage(teacher, sims, student_weight)
    return [SystemResult.of_folds(f"rerank-top{k}", f"rerank-top{k}", student.seed,
                                  {f: rerank_metrics(sims, fused, k, split.captions_per_image, f) for f in protocols(folds)},
                                  k=k, source=student.name, student_weight=student_weight) for k in ks]


def onnx_result(export_dir: str, variant: str, split: CaptionSplit, batch_size: int, folds: Folds, source: str,
                pytorch: SystemResult | None, r1_drop_bound: float) -> SystemResult:
    """An ONNX variant, compared (under the first protocol) with the PyTorch student it was exported from
    when that was evaluated."""
    by_folds = metrics_for_folds(onnx_sims(export_dir, split, batch_size, variant), split, folds)
    metrics = next(iter(by_folds.values()))
    parity = None if pytorch is None else OnnxParity.compare(metrics, pytorch.metrics, r1_drop_bound)
    return SystemResult.of_folds(f"onnx-{variant}", f"onnx-{variant}", None, by_folds, source=source, variant=variant,
                                 parity=parity)
