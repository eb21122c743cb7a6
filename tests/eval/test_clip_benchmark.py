import json

import pytest

from core.run_layout import RunPaths, describe
from eval.clip_benchmark import dataset_name, to_records, write_clip_benchmark
from eval.metrics import KEYS
from eval.records import EvalResults, SystemResult

# CLIP_benchmark's keys (clip_benchmark/metrics/zeroshot_retrieval.py with --recall_k 1 5 10)
CLIP_BENCHMARK_METRICS = {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}


def _system(name: str, group: str, seed: int | None, i2t: float, t2i: float) -> SystemResult:
    metrics = {k: (i2t if k.startswith("i2t") else t2i) for k in KEYS if k.endswith(("r1", "r5", "r10"))}
    metrics.update({"i2t_r5": 60.0, "t2i_r10": 90.0, "i2t_medr": 2.0, "i2t_meanr": 3.0, "t2i_medr": 2.0,
                    "t2i_meanr": 4.0, "rsum": 300.0})
    return SystemResult(name, group, seed, metrics)


RESULTS = EvalResults("test", 1, 16, 5, [
    _system("teacher", "teacher", 0, 50.0, 25.0),
    _system("distilled-seed0", "distilled", 0, 40.0, 20.0),
    _system("distilled-seed1", "distilled", 1, 42.0, 21.0),
    _system("onnx-int8", "onnx-int8", None, 39.5, 19.5),
])


def test_one_record_per_system_with_clip_benchmarks_keys():
    records = to_records(RESULTS, "flickr8k_test", "demo")
    assert [r["model"] for r in records] == ["teacher", "distilled-seed0", "distilled-seed1", "onnx-int8"]
    for record in records:
        assert list(record) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
        assert record["task"] == "zeroshot_retrieval" and record["language"] == "en"
        assert record["dataset"] == "flickr8k_test" and record["pretrained"] == "demo"
        assert set(record["metrics"]) == CLIP_BENCHMARK_METRICS


def test_recalls_are_fractions_and_image_retrieval_is_text_to_image():
    teacher = to_records(RESULTS, "d", "p")[0]["metrics"]
    assert all(0.0 <= v <= 1.0 for v in teacher.values())
    # CLIP_benchmark: "image retrieval" = a caption ranks images (t2i); "text retrieval" = an image ranks captions (i2t)
    assert teacher["image_retrieval_recall@1"] == pytest.approx(0.25)
    assert teacher["text_retrieval_recall@1"] == pytest.approx(0.50)
    assert teacher["text_retrieval_recall@5"] == pytest.approx(0.60)
    assert teacher["image_retrieval_recall@10"] == pytest.approx(0.90)


def test_dataset_name_from_the_data_config():
    assert dataset_name("karpathy", "../shared/data/flickr8k-dev/dataset_flickr8k.json", "test") == "flickr8k_test"
    assert dataset_name("precomputed", "/data/f30k_precomp", "val") == "f30k_precomp_val"
    assert dataset_name("synthetic", None, "test") == "synthetic_test"


def test_written_files_are_named_by_the_layout_and_stale_ones_go(tmp_path):
    paths = RunPaths(tmp_path / "myrun")
    paths.clip_benchmark_dir.mkdir(parents=True)
    stale = paths.clip_benchmark("rerank-top10")
    stale.write_text("{}")
    written = write_clip_benchmark(RESULTS, paths, "synthetic", None)
    assert sorted(p.name for p in paths.clip_benchmark_dir.iterdir()) == sorted(
        f"{s.name}.json" for s in RESULTS.systems)
    assert not stale.exists() and written[0] == paths.clip_benchmark("teacher")
    record = json.loads(paths.clip_benchmark("distilled-seed1").read_text())
    assert record["pretrained"] == "myrun" and record["dataset"] == "synthetic_test"
    assert record["metrics"]["text_retrieval_recall@1"] == pytest.approx(0.42)
    assert all(describe(p.relative_to(paths.root)) for p in written)
