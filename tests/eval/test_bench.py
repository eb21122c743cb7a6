import torch

from core.config import BenchConfig, ExportConfig
from core.data.loading import image_loader
from eval.bench import run_benchmark
from export.onnx_export import export_student


def test_benchmark_rows(tiny_teacher, tiny_student, splits, tmp_path):
    split = splits["test"]
    batch = next(iter(image_loader(split.head(4), tiny_student.image_tower.preprocess(), 4)))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    export_student(tiny_student, tmp_path / "export", ExportConfig(), tiny_student.image_tower.preprocess(),
                   batch.images, None, list(split.captions[:4]), weights)
    result = run_benchmark(tiny_teacher, tiny_student, tmp_path / "export", split, tiny_teacher.image_tower.preprocess(),
                           tiny_student.image_tower.preprocess(), BenchConfig(warmup=1, repeats=4, queries=3, cuda=False))
    keys = {(r["measure"], r["system"], r["backend"], r["device"]) for r in result["rows"]}
    assert keys == {("caption_encoding", "student", "pytorch", "cpu"), ("retrieval", "student", "pytorch", "cpu"),
                    ("retrieval", "teacher", "pytorch", "cpu"), ("caption_encoding", "student", "onnxruntime", "cpu"),
                    ("retrieval", "student", "onnxruntime", "cpu")}
    for row in result["rows"]:
        assert row["n"] == 4 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        if row["measure"] == "retrieval":
            assert row["gallery"] == split.n_images
    assert result["gallery_images"] == 16 and result["machine"]["cpu_count"] >= 1
    assert "torch" in result["machine"]["versions"]
