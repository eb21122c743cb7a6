import numpy as np
import pytest
import torch

from core.checkpoint import save_weights
from core.run_layout import RunPaths
from distill.first_stage import first_stage
from distill.models import save_model_info
from student.encode import encode_split
from tests.conftest import build_tiny


@pytest.fixture()
def student_dir(tmp_path, text_model_dir):
    student = build_tiny("student", text_model_dir)
    directory = tmp_path / "run" / "students" / "baseline-seed3"
    directory.mkdir(parents=True)
    save_model_info(directory, "student", student.cfg, str(text_model_dir), None, seed=3, variant="baseline")
    save_weights(student, directory / "model.safetensors")
    return student, directory


def test_a_run_student_by_name_embeds_like_the_student(student_dir, splits):
    student, directory = student_dir
    stage = first_stage("baseline", RunPaths(directory.parents[1]), seed=3)
    assert stage.kind == "student" and len(stage.identity["sha256"]) == 64
    images, captions = stage.embed(splits["val"], RunPaths(directory.parents[1]), 8, torch.device("cpu"))
    want = encode_split(student, splits["val"], student.image_tower.preprocess(), 8, torch.device("cpu"), False)
    np.testing.assert_allclose(images, want[0], atol=1e-5)
    np.testing.assert_allclose(captions, want[1], atol=1e-5)


def test_an_export_directory_embeds_through_onnxruntime(student_dir, splits, tmp_path):
    from core.config import ExportConfig
    from eval.metrics import retrieval_metrics
    from export.onnx_export import export_student
    from tests.export.conftest import gate_data

    student, directory = student_dir
    out = tmp_path / "export"
    with torch.no_grad():
        export_student(student, out, ExportConfig(exporter="torchscript", variants=["fp32"], latency_repeats=1),
                       student.image_tower.preprocess(), gate_data(student, splits["test"]),
                       directory / "model.safetensors", retrieval_metrics)
    stage = first_stage(str(out), RunPaths(tmp_path), seed=0)
    assert stage.kind == "onnx"
    images, captions = stage.embed(splits["val"], RunPaths(tmp_path), 8, torch.device("cpu"))
    want = encode_split(student, splits["val"], student.image_tower.preprocess(), 8, torch.device("cpu"), False)
    np.testing.assert_allclose(images, want[0], atol=1e-4)
    np.testing.assert_allclose(captions, want[1], atol=1e-4)


def test_a_missing_generator_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill --variant distilled"):
        first_stage("distilled", RunPaths(tmp_path), seed=0)
    with pytest.raises(FileNotFoundError, match="student directory .* or an export directory"):
        first_stage(str(tmp_path), RunPaths(tmp_path), seed=0)
