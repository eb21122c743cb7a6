"""A student whose image tower adds the trunk's tokens (`fine_tokens`) exports, and the torch-free runtime
reproduces it: GPO pools all the tokens, so the projection of the finer grid runs inside the image graph."""
import torch

from core.config import ExportConfig
from tests.conftest import TINY_TOWERS, build_tiny
from tests.export.conftest import assert_runtime_reproduces, export, gate_data


def test_student_with_fine_tokens_exports(tmp_path, text_model_dir, splits):
    student = build_tiny("student", text_model_dir, image_pooling="gpo",
                         image_tower={**TINY_TOWERS["image_tower"], "freeze": True, "train_top": 2, "fine_tokens": True})
    torch.nn.init.normal_(student.image_gpo.weights[-1].weight)  # learned weights, not the mean-pooling start
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = student.encode_images(images)
        student.image_tower.fine_proj.bias.add_(1.0)
        assert not torch.allclose(student.encode_images(images), before)  # the fine tokens reach the embedding
    with torch.no_grad():
        manifest = export(student, tmp_path / "export", ExportConfig(variants=["fp32"], latency_repeats=2),
                          gate_data(student, splits["test"]))
    assert manifest["parity"]["passed"]
    assert_runtime_reproduces(student, tmp_path / "export", splits["test"])
