"""One tiny student exported with every variant, shared by the export tests."""
from __future__ import annotations

import pytest
import torch

from core.data.loading import image_loader
from core.data.records import CaptionSplit
from eval.metrics import retrieval_metrics
from export.onnx_export import GateData, export_student


def gate_data(student, split: CaptionSplit) -> GateData:
    batch = next(iter(image_loader(split, student.image_tower.preprocess(), split.n_images)))
    mask = None if batch.image_mask is None else batch.image_mask.numpy()
    return GateData(batch.images.numpy(), mask, list(split.captions), split.captions_per_image)


def assert_runtime_reproduces(student, export_dir, split: CaptionSplit) -> None:
    """The torch-free runtime's caption (5 of `split`'s and a one-word one) and image (4 of `split`'s)
    embeddings equal the PyTorch student's."""
    import numpy as np

    from export.runtime import OnnxStudent

    runtime = OnnxStudent(export_dir)
    texts = list(split.captions[:5]) + ["a"]
    tokens = student.tokenize(texts)
    batch = next(iter(image_loader(split.head(4), student.image_tower.preprocess(), 4)))
    with torch.no_grad():
        text_ref = student.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
        image_ref = student.encode_images(batch.images).numpy()
    np.testing.assert_allclose(runtime.encode_text(texts), text_ref, atol=1e-5)
    np.testing.assert_allclose(runtime.encode_image_files(list(split.image_paths[:4])), image_ref, atol=1e-5)


def export(student, out, cfg, data: GateData):
    weights = out.parent / f"{out.name}.safetensors"
    weights.write_bytes(b"checkpoint " + out.name.encode())
    return export_student(student, out, cfg, student.image_tower.preprocess(), data, weights, retrieval_metrics)


@pytest.fixture(scope="session", params=["dynamo", "torchscript"])
def exported(request, tmp_path_factory, text_model_dir, splits):
    """(student, export dir, manifest) for each exporter."""
    from core.config import ExportConfig, GateConfig
    from core.schema import build
    from tests.conftest import TINY_GATES, build_tiny

    student = build_tiny("student", text_model_dir)
    out = tmp_path_factory.mktemp("export") / request.param
    cfg = ExportConfig(exporter=request.param, latency_repeats=2, gate=build(GateConfig, TINY_GATES))
    with torch.no_grad():
        manifest = export(student, out, cfg, gate_data(student, splits["test"]))
    return student, out, manifest
