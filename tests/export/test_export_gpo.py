"""A student with GPO pooling on both sides and towers cut for top fine-tuning exports, and the
torch-free runtime reproduces it (sorting, the pooling weights and the cut towers run inside the graphs)."""
import torch

from core.config import ExportConfig
from tests.conftest import TINY_TOWERS, build_tiny
from tests.export.conftest import assert_runtime_reproduces, export, gate_data


def test_gpo_student_with_cut_towers_exports(tmp_path, text_model_dir, splits):
    student = build_tiny("student", text_model_dir, image_pooling="gpo", text_pooling="gpo",
                         image_tower={**TINY_TOWERS["image_tower"], "freeze": True, "train_top": 1},
                         text_tower={**TINY_TOWERS["text_tower"], "freeze": True, "train_top": 1})
    for gpo in (student.image_gpo, student.text_gpo):
        torch.nn.init.normal_(gpo.weights[-1].weight)  # learned weights, not the mean-pooling start
    with torch.no_grad():
        manifest = export(student, tmp_path / "export", ExportConfig(variants=["fp32"], latency_repeats=2),
                          gate_data(student, splits["test"]))
    assert manifest["parity"]["passed"] and manifest["text"]["sentence_transformer"] is None
    assert_runtime_reproduces(student, tmp_path / "export", splits["test"])
