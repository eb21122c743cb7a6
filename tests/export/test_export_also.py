"""A student whose image tower runs a further backbone (`image_tower.also`) exports with both backbones
inside the image graph, and the torch-free runtime reproduces it."""
import torch

from core.config import ExportConfig
from tests.conftest import TINY_TOWERS, build_tiny
from tests.export.conftest import assert_runtime_reproduces, export, gate_data


def test_student_with_a_further_backbone_exports(tmp_path, text_model_dir, splits):
    student = build_tiny("student", text_model_dir, image_pooling="gpo",
                         image_tower={**TINY_TOWERS["image_tower"], "also": [{"name": "test_efficientnet"}]})
    with torch.no_grad():
        manifest = export(student, tmp_path / "export", ExportConfig(variants=["fp32"], latency_repeats=2),
                          gate_data(student, splits["test"]))
    assert manifest["parity"]["passed"]
    assert_runtime_reproduces(student, tmp_path / "export", splits["test"])
