"""Evaluate any scorer on a split: the teacher, the PyTorch student, or the exported ONNX student."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.progress import progress
from core.towers.frozen import NOT_FROZEN, Frozen
from eval.metrics import block_metrics, metrics_by_folds, protocols, retrieval_metrics, scored_folds
from eval.rerank import rerank_metrics
from export.runtime import SORT_BLOCK_BATCHES
from student.encode import encode_split as student_encode
from student.model import DualEncoder
from teacher.model import ScanTeacher
from teacher.scoring import Side, Teacher, candidate_scorer, diagonal_scores, global_sims
from teacher.scoring import encode_split as teacher_encode


def student_sims(model: DualEncoder, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> np.ndarray:
    images, captions = student_encode(model, split, preprocess, batch_size, device, progress, frozen)
    return images @ captions.T


def teacher_metrics(teacher: Teacher, images: Side, captions: Side,
                    split: CaptionSplit, folds: int = 1, block_gib: float = 0.5, bf16: bool = False,
                    progress: bool = True) -> tuple[dict[str, float], str]:
    """The teacher's metrics on a split under one protocol (`teacher_metrics_by_folds`)."""
    by_folds, scored = teacher_metrics_by_folds(teacher, images, captions, split, [folds], block_gib, bf16, progress)
    return by_folds[folds], scored


def teacher_metrics_by_folds(teacher: Teacher, images: Side, captions: Side, split: CaptionSplit,
                             folds: int | Sequence[int], block_gib: float = 0.5, bf16: bool = False,
                             progress: bool = True) -> tuple[dict[int, dict[str, float]], str]:
    """The teacher's metrics on a split from its encoded (or stored) tokens under every protocol of
    `folds`, and how its pairs were scored: every pair, or, for a cross-encoder with `cross.eval_top_k`,
    each query's top-K by the teacher's global score re-ranked by its full score (a forward per pair
    does not fit every pair). Every pair means every pair a protocol ranks: the whole matrix once
    when 1 is listed, else only each fold's own block (`eval.metrics.scored_folds`: COCO 1K scores
    five 1K x 5K blocks, a fifth of the 5K x 25K matrix)."""
    k, cpi = teacher.eval_top_k, split.captions_per_image
    if not k:
        return block_metrics(teacher_blocks(teacher, images, captions, split, folds, block_gib, bf16, progress), cpi,
                             folds), "every pair"
    scorer, first = candidate_scorer(teacher, images, captions, bf16), global_sims(images, captions)
    return ({f: rerank_metrics(first, scorer, k, cpi, f) for f in protocols(folds)},
            f"top-{k} of its global score, re-ranked")


def teacher_blocks(teacher: Teacher, images: Side, captions: Side, split: CaptionSplit, folds: int | Sequence[int],
                   block_gib: float = 0.5, bf16: bool = False, progress: bool = True) -> dict[int, list[np.ndarray]]:
    """The teacher's scores of every pair the protocols of `folds` rank: the diagonal blocks of each
    `scored_folds` protocol (`blocks[1]`: the whole matrix)."""
    return {f: list(diagonal_scores(teacher, images, captions, f, split.captions_per_image, block_gib, progress, bf16))
            for f in scored_folds(folds)}


def teacher_split_metrics(teacher: ScanTeacher, split: CaptionSplit, preprocess: ImagePreprocess | None,
                          batch_size: int, device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN,
                          folds: int = 1) -> tuple[dict[str, float], str]:
    """`teacher_metrics` of a split the teacher encodes here (model selection, teacher ablations)."""
    images, captions = teacher_encode(teacher, split, preprocess, batch_size, device, progress, frozen)
    return teacher_metrics(teacher, images, captions, split, folds, progress=progress)


def onnx_sims(export_dir: str, split: CaptionSplit, batch_size: int, variant: str = "fp32",
              providers: list[str] | str | None = None) -> np.ndarray:
    import warnings

    from export.runtime import OnnxStudent

    with warnings.catch_warnings():  # evaluating a GPU variant (fp16) on the CPU is allowed here
        warnings.simplefilter("ignore")
        student = OnnxStudent(export_dir, variant, providers=providers)
    return onnx_gallery(student, split, batch_size) @ onnx_captions(student, split, batch_size).T


def onnx_gallery(runtime, split: CaptionSplit, batch_size: int = 64) -> np.ndarray:
    """Image embeddings of a split by an exported student (`export.runtime.OnnxStudent`), in blocks: the
    features may be memory-mapped files larger than memory, and a large gallery reports its progress."""
    starts = progress(range(0, split.n_images, batch_size), "ONNX image encoding")
    if split.features is not None:
        feats = split.features
        return np.concatenate([runtime.encode_regions(np.asarray(feats[s:s + batch_size], dtype=np.float32), batch_size)
                               for s in starts])
    return np.concatenate([runtime.encode_image_files(split.image_paths[s:s + batch_size], batch_size) for s in starts])


def onnx_captions(runtime, split: CaptionSplit, batch_size: int = 64,
                  batches_per_block: int = SORT_BLOCK_BATCHES) -> np.ndarray:
    """Caption embeddings of a split by an exported student, in blocks of `batches_per_block` batches that
    report their progress: `encode_text` sorts a block's captions by length, which a block of one batch
    could not (and a whole split's token ids are not held at once)."""
    captions, block = list(split.captions), batch_size * batches_per_block
    return np.concatenate([runtime.encode_text(captions[s:s + block], batch_size)
                           for s in progress(range(0, len(captions), block), "ONNX caption encoding")])


def metrics_for(sims: np.ndarray, split: CaptionSplit, folds: int = 1) -> dict[str, float]:
    return retrieval_metrics(sims, split.captions_per_image, folds)


def metrics_for_folds(sims: np.ndarray, split: CaptionSplit, folds: int | Sequence[int]) -> dict[int, dict[str, float]]:
    """The metrics of a whole matrix (a student's, an ONNX variant's: cheap) under every protocol of `folds`."""
    return metrics_by_folds(sims, split.captions_per_image, folds)
