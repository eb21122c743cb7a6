from core.config import BenchConfig, ExportConfig, GateConfig
from core.schema import build
from eval.bench import run_benchmark
from tests.conftest import TINY_GATES
from tests.export.conftest import export, gate_data


def test_benchmark_rows(tiny_teacher, tiny_student, splits, tmp_path):
    split = splits["test"]
    cfg = ExportConfig(latency_repeats=1, gate=build(GateConfig, TINY_GATES))
    export(tiny_student, tmp_path / "export", cfg, gate_data(tiny_student, split))  # 16 images, as TINY_GATES assumes
    result = run_benchmark(tiny_teacher, tiny_student, tmp_path / "export", split, tiny_teacher.image_tower.preprocess(),
                           tiny_student.image_tower.preprocess(), BenchConfig(warmup=1, repeats=4, queries=3, cuda=False))
    keys = {(r["measure"], r["system"], r["backend"], r["device"], r.get("variant")) for r in result["rows"]}
    onnx = {(m, "student", "onnxruntime", "cpu", v) for m in ("caption_encoding", "retrieval") for v in ("fp32", "optimized", "int8")}
    assert keys == {("caption_encoding", "student", "pytorch", "cpu", None), ("retrieval", "student", "pytorch", "cpu", None),
                    ("retrieval", "teacher", "pytorch", "cpu", None)} | onnx  # fp16 is for GPUs: not timed on the CPU
    for row in result["rows"]:
        assert row["n"] == 4 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        if row["measure"] == "retrieval":
            assert row["gallery"] == split.n_images
    assert result["gallery_images"] == 16 and result["machine"]["cpu_count"] >= 1
    assert "torch" in result["machine"]["versions"]
