"""The first-stage dual encoder that proposes candidates: a trained student of this run, any
student directory, or an exported (ONNX) student. Its identity goes into the top-K cache manifest."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data.records import CaptionSplit
from core.io import sha256_file
from core.run_layout import ModelDir, RunPaths
from core.towers.frozen import frozen_for
from distill.models import load_model
from export.runtime import MANIFEST as EXPORT_MANIFEST
from student.encode import encode_split as student_encode

RUN_STUDENTS = ("baseline", "distilled")


@dataclass
class FirstStage:
    directory: Path
    kind: str  # "student" (PyTorch) or "onnx"

    @property
    def identity(self) -> dict[str, Any]:
        weights = ModelDir(self.directory).weights if self.kind == "student" else self.directory / EXPORT_MANIFEST
        return {"kind": self.kind, "sha256": sha256_file(weights)}

    def embed(self, split: CaptionSplit, paths: RunPaths, batch_size: int,
              device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """(image embeddings, caption embeddings) of the split, L2-normalised float32."""
        if self.kind == "student":
            student = load_model(self.directory, device)
            return student_encode(student, split, student.image_tower.preprocess(), batch_size, device,
                                  frozen=frozen_for(student, split, paths.features, batch_size, device))
        from eval.evaluate import onnx_captions, onnx_gallery
        from export.runtime import OnnxStudent

        runtime = OnnxStudent(self.directory, "fp32", providers="cuda" if device.type == "cuda" else "cpu")
        return onnx_gallery(runtime, split, batch_size), onnx_captions(runtime, split, batch_size)


def first_stage(name: str, paths: RunPaths, seed: int) -> FirstStage:
    """`baseline` / `distilled` (this run's student of `seed`), or a student or export directory."""
    directory = paths.student(name, seed) if name in RUN_STUDENTS else Path(name)
    if ModelDir(directory).info.is_file() and ModelDir(directory).weights.is_file():
        return FirstStage(directory, "student")
    if (directory / EXPORT_MANIFEST).is_file() and (directory / "text_encoder.onnx").is_file():
        return FirstStage(directory, "onnx")
    hint = " (train it first: `itr-distill distill --variant " + name + "`)" if name in RUN_STUDENTS else ""
    raise FileNotFoundError(f"{directory}: scores.generator must be a trained student directory (model.json, "
                            f"model.safetensors) or an export directory (manifest.json, text_encoder.onnx){hint}")
