import numpy as np

from core.config import BenchConfig, ExportConfig, GateConfig
from core.data.images import load_image
from core.data.records import CaptionSplit
from core.schema import build
from eval.bench import gallery_inputs, run_benchmark
from tests.conftest import TINY_GATES
from tests.export.conftest import export, gate_data


def test_benchmark_rows(tiny_teacher, tiny_student, splits, tmp_path):
    split = splits["test"]
    cfg = ExportConfig(latency_repeats=1, gate=build(GateConfig, TINY_GATES))
    export(tiny_student, tmp_path / "export", cfg, gate_data(tiny_student, split))  # 16 images, as TINY_GATES assumes
    result = run_benchmark(tiny_teacher, tiny_student, tmp_path / "export", split, tiny_student.image_tower.preprocess(),
                           BenchConfig(warmup=1, repeats=4, queries=3, cuda=False, image_batch=5, image_budget_s=60.0))
    keys = {(r["measure"], r["system"], r["backend"], r["device"], r.get("variant")) for r in result["rows"]}
    measures = ("caption_encoding", "retrieval", "image_encoding")
    onnx = {(m, "student", "onnxruntime", "cpu", v) for m in measures for v in ("fp32", "optimized", "int8")}
    assert keys == {("caption_encoding", "student", "pytorch", "cpu", None), ("retrieval", "student", "pytorch", "cpu", None),
                    ("image_encoding", "student", "pytorch", "cpu", None),
                    ("retrieval", "teacher", "pytorch", "cpu", None)} | onnx  # fp16 is for GPUs: not timed on the CPU
    for row in result["rows"]:
        assert row["n"] == 4 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        if row["measure"] == "retrieval":
            assert row["gallery"] == split.n_images
    images = [r for r in result["rows"] if r["measure"] == "image_encoding"]
    assert len(images) == 8  # one image and a batch of image_batch, per backend and variant
    for batch in (1, 5):
        rows = [r for r in images if r["batch"] == batch]
        assert len(rows) == 4 and all(r["per_image_ms"] == r["p50_ms"] / batch for r in rows)
    assert result["gallery_images"] == 16 and result["machine"]["cpu_count"] >= 1
    assert "torch" in result["machine"]["versions"]


def test_gallery_inputs_are_what_the_image_tower_takes(tiny_student, splits):
    split, pre = splits["test"], tiny_student.image_tower.preprocess()
    pixels = gallery_inputs(split, pre, 3)
    assert pixels.shape == (3, *pre(load_image(split.image_paths[0])).shape)
    np.testing.assert_array_equal(pixels[2], pre(load_image(split.image_paths[2])))
    regions = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float16)
    features = CaptionSplit("test", "regions.npy", tuple(f"c{i}" for i in range(8)), 2, features=regions)
    got = gallery_inputs(features, None, 32)  # at most the split's images
    assert got.dtype == np.float32 and got.shape == (4, 6, 8)
    np.testing.assert_array_equal(got, regions.astype(np.float32))
