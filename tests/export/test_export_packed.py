"""A pack of students exports as one image graph and one text graph (the shared trunk once, each member's
top and heads) behind the parity gates, and the torch-free runtime reproduces it."""
import torch

from core.config import ExportConfig
from student.packed import PackedStudent
from tests.export.conftest import assert_runtime_reproduces, export, gate_data
from tests.student.test_packed import _member


def test_a_pack_exports_and_the_runtime_reproduces_it(tmp_path, text_model_dir, splits):
    pack = PackedStudent([_member(text_model_dir, 0), _member(text_model_dir, 1)], [0.4, 0.6], ["a", "b"]).eval()
    with torch.no_grad():
        manifest = export(pack, tmp_path / "export", ExportConfig(variants=["fp32"], latency_repeats=2),
                          gate_data(pack, splits["test"]))
    assert manifest["parity"]["passed"]
    assert manifest["embedding_dim"] == pack.embedding_dim
    assert manifest["text"]["sentence_transformer"] is None  # several heads: no sentence-transformers directory
    assert_runtime_reproduces(pack, tmp_path / "export", splits["test"])
