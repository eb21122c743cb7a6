"""A student with token-level MEMBER memory exports: each graph carries the other modality's token bank
as a constant (with the association that maps it into the reader's token space), and the torch-free
runtime reproduces PyTorch."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from core.config import ExportConfig
from tests.conftest import build_tiny
from tests.export.conftest import assert_runtime_reproduces, export, gate_data


@pytest.fixture(scope="module")
def token_level(tmp_path_factory, text_model_dir, splits):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 6, "level": "token"}, image_pooling="tower")
    torch.manual_seed(1)
    student.token_memory.update(torch.randn(40, 32), torch.randn(40, 32))
    with torch.no_grad():  # a trained association, not the identity it starts from
        for association in (student.token_memory.image_to_text, student.token_memory.text_to_image):
            association.weight.add_(0.1 * torch.randn_like(association.weight))
    out = tmp_path_factory.mktemp("token_memory") / "export"
    with torch.no_grad():
        manifest = export(student, out, ExportConfig(variants=["fp32"], latency_repeats=2),
                          gate_data(student, splits["test"]))
    return student, out, manifest


def _initializers(path) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


@pytest.mark.parametrize("graph, bank", [("image_encoder.onnx", "text_bank"), ("text_encoder.onnx", "image_bank")])
def test_each_graph_carries_the_other_modalitys_token_bank_as_a_constant(token_level, graph, bank):
    student, out, manifest = token_level
    assert manifest["parity"]["passed"] and manifest["text"]["sentence_transformer"] is None
    memory = student.token_memory
    association = memory.text_to_image if bank == "text_bank" else memory.image_to_text
    raw = getattr(memory, bank)
    with torch.no_grad():
        keys = F.normalize(association(raw), dim=-1)  # what an exporter may fold the bank into
    shapes = {tuple(raw.shape), tuple(keys.shape)}
    held = [a for a in _initializers(out / graph) if a.shape in shapes]
    assert any(np.array_equal(a, raw.numpy()) or np.allclose(a, keys.numpy(), atol=1e-6) for a in held)


def test_runtime_reproduces_the_token_level_student(token_level, splits):
    student, out, _ = token_level
    assert_runtime_reproduces(student, out, splits["test"])
    tokens = student.tokenize(list(splits["test"].captions[:5]))
    with torch.no_grad():
        fused = student.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
        student.token_memory.filled.fill_(0.0)  # the read matters: without it the embeddings differ
        plain = student.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
        student.token_memory.filled.fill_(1.0)
    assert not np.allclose(plain, fused)
