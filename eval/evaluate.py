"""Evaluate any scorer on a split: the teacher, the PyTorch student, or the exported ONNX student."""
from __future__ import annotations

import numpy as np
import torch

from core.data.images import ImagePreprocess
from core.data.records import CaptionSplit
from core.towers.frozen import NOT_FROZEN, Frozen
from eval.metrics import retrieval_metrics
from student.encode import encode_split as student_encode
from student.model import DualEncoder
from teacher.model import ScanTeacher
from teacher.scoring import encode_split as teacher_encode
from teacher.scoring import score_all


def student_sims(model: DualEncoder, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> np.ndarray:
    images, captions = student_encode(model, split, preprocess, batch_size, device, progress, frozen)
    return images @ captions.T


def teacher_sims(teacher: ScanTeacher, split: CaptionSplit, preprocess: ImagePreprocess | None, batch_size: int,
                 device: torch.device, progress: bool = True, frozen: Frozen = NOT_FROZEN) -> np.ndarray:
    images, captions = teacher_encode(teacher, split, preprocess, batch_size, device, progress, frozen)
    return score_all(teacher, images, captions, progress=progress)


def onnx_sims(export_dir: str, split: CaptionSplit, batch_size: int, variant: str = "fp32",
              providers: list[str] | str | None = None) -> np.ndarray:
    import warnings

    from export.runtime import OnnxStudent

    with warnings.catch_warnings():  # evaluating a GPU variant (fp16) on the CPU is allowed here
        warnings.simplefilter("ignore")
        student = OnnxStudent(export_dir, variant, providers=providers)
    return onnx_gallery(student, split, batch_size) @ student.encode_text(list(split.captions), batch_size).T


def onnx_gallery(runtime, split: CaptionSplit, batch_size: int = 64) -> np.ndarray:
    """Image embeddings of a split by an exported student (`export.runtime.OnnxStudent`)."""
    if split.features is not None:  # in blocks: the features may be memory-mapped files larger than memory
        feats = split.features
        return np.concatenate([runtime.encode_regions(np.asarray(feats[s:s + batch_size], dtype=np.float32), batch_size)
                               for s in range(0, len(feats), batch_size)])
    return runtime.encode_image_files(split.image_paths, batch_size)


def metrics_for(sims: np.ndarray, split: CaptionSplit, folds: int = 1) -> dict[str, float]:
    return retrieval_metrics(sims, split.captions_per_image, folds)
