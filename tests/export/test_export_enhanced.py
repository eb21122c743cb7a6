"""A student with every enhancement (self-guided pooling, memory banks, local space) exports: the
banks travel as initializers of the graphs, and the torch-free runtime reproduces PyTorch."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core.config import ExportConfig
from export.runtime import OnnxStudent
from tests.conftest import build_tiny
from tests.export.conftest import assert_runtime_reproduces, export, gate_data


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory, text_model_dir, splits):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 6}, hierarchy={"local_dim": 16},
                         self_guided={"attention_dim": 8})
    torch.nn.init.normal_(student.image_weights.query.weight)  # a trained query, not the uniform start
    torch.nn.init.normal_(student.text_weights.query.weight)
    student.memory.update(torch.randn(40, 32), torch.randn(40, 32))
    out = tmp_path_factory.mktemp("enhanced") / "export"
    with torch.no_grad():
        manifest = export(student, out, ExportConfig(variants=["fp32", "optimized"], latency_repeats=2),
                          gate_data(student, splits["test"]))
    return student, out, manifest


def _initializers(path) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


def test_gates_pass_and_the_manifest_names_the_shipped_width(enhanced):
    _, out, manifest = enhanced
    assert manifest["embedding_dim"] == 48 and manifest["parity"]["passed"]
    assert manifest["text"]["sentence_transformer"] is None and not (out / "sentence_transformer").exists()
    assert "cannot hold: use the ONNX graphs" in (out / "README.md").read_text()


@pytest.mark.parametrize("graph, bank", [("image_encoder.onnx", "text_bank"), ("text_encoder.onnx", "image_bank")])
def test_each_graph_carries_the_other_modalitys_bank_as_a_constant(enhanced, graph, bank):
    student, out, _ = enhanced
    expected = getattr(student.memory, bank).numpy()
    assert any(a.shape == expected.shape and np.array_equal(a, expected) for a in _initializers(out / graph))


def test_runtime_reproduces_the_enhanced_student(enhanced, splits):
    student, out, _ = enhanced
    assert_runtime_reproduces(student, out, splits["test"])
    assert OnnxStudent(out).encode_text(["a red cube"]).shape == (1, 48)
