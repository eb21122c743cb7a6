import subprocess
import sys

import numpy as np
import pytest
import torch

from core.config import ExportConfig
from core.data.loading import image_loader
from export.onnx_export import ExportParityError, export_student, parity_gate
from export.runtime import OnnxStudent, ProviderError, make_session


def sample(student, split, n=6):
    batch = next(iter(image_loader(split.head(n), student.image_tower.preprocess(), n)))
    return batch.images, list(split.captions[: 5 * n: 5])


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exported(request, tmp_path_factory, text_model_dir, splits):
    from tests.conftest import build_tiny

    student = build_tiny("student", text_model_dir)
    image = student.image_tower
    out = tmp_path_factory.mktemp("export") / request.param
    weights = out.parent / "w.bin"
    weights.write_bytes(b"checkpoint")
    images, texts = sample(student, splits["test"])
    manifest = export_student(student, out, ExportConfig(exporter=request.param), image.preprocess(), images, None,
                              texts, weights)
    return student, out, manifest


def test_manifest_and_files(exported):
    student, out, manifest = exported
    assert {p.name for p in out.iterdir()} >= {"image_encoder.onnx", "text_encoder.onnx", "tokenizer", "manifest.json"}
    assert manifest["embedding_dim"] == 32 and manifest["image"]["input"] == "pixel_values"
    assert manifest["image"]["preprocess"]["size"] == 32 and manifest["text"]["max_length"] == 24
    assert manifest["parity"]["image"]["min_cosine"] >= 0.9999 and manifest["parity"]["text"]["min_cosine"] >= 0.9999
    assert len(manifest["parity"]["text_lengths"]) >= 3  # short, padded, truncated
    assert len(manifest["source_checkpoint"]["sha256"]) == 64


@pytest.mark.parametrize("texts", [["a"], ["a red circle"] * 3, ["tiny", "a big red circle left of a small blue square"],
                                   ["word " * 60]])
def test_runtime_matches_pytorch_on_dynamic_shapes(exported, texts):
    student, out, _ = exported
    runtime = OnnxStudent(out)
    tokens = student.tokenize(texts)
    np.testing.assert_array_equal(runtime.tokenize(texts)["input_ids"], tokens["input_ids"].numpy())
    with torch.no_grad():
        ref = student.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
    np.testing.assert_allclose(runtime.encode_text(texts), ref, atol=1e-5)


@pytest.mark.parametrize("n", [1, 5])
def test_runtime_images_match_pytorch(exported, splits, n):
    student, out, _ = exported
    runtime = OnnxStudent(out)
    paths = list(splits["test"].image_paths[:n])
    batch = next(iter(image_loader(splits["test"].head(n), student.image_tower.preprocess(), n)))
    with torch.no_grad():
        ref = student.encode_images(batch.images).numpy()
    np.testing.assert_allclose(runtime.encode_image_files(paths), ref, atol=1e-5)


def test_parity_gate_fails_for_a_different_model(exported, splits, tiny_student):
    _, out, _ = exported
    images, texts = sample(tiny_student, splits["test"])
    with torch.no_grad():
        for p in tiny_student.text_proj.parameters():
            p.add_(torch.randn_like(p))
    with pytest.raises(ExportParityError, match="text"):
        parity_gate(tiny_student, out / "image_encoder.onnx", out / "text_encoder.onnx", images, None, texts, ExportConfig())


def test_provider_check(exported):
    _, out, _ = exported
    with pytest.raises(ProviderError, match="not available"):
        make_session(out / "text_encoder.onnx", ["NoSuchExecutionProvider"])
    assert make_session(out / "text_encoder.onnx").get_providers()[0] == "CPUExecutionProvider"


def test_runtime_does_not_import_torch(exported):
    _, out, _ = exported
    code = ("import sys; from export.runtime import OnnxStudent; r = OnnxStudent(sys.argv[1]); "
            "e = r.encode_text(['a red circle']); assert e.shape == (1, 32), e.shape; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
