import dataclasses

import pytest

from core.config import BenchConfig
from eval.matrix import encoder_flops, run_matrix
from tests.conftest import TINY_BENCH
from tests.export.conftest import export, gate_data


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, text_model_dir, splits):
    from core.config import ExportConfig, GateConfig
    from core.schema import build
    from tests.conftest import TINY_GATES, build_tiny

    student = build_tiny("student", text_model_dir)
    out = tmp_path_factory.mktemp("matrix") / "export"
    export(student, out, ExportConfig(latency_repeats=1, gate=build(GateConfig, TINY_GATES)), gate_data(student, splits["test"]))
    cfg = dataclasses.replace(build(BenchConfig, TINY_BENCH), cuda=False)
    return student, run_matrix(student, out, cfg)


def test_every_backend_is_timed_at_every_shape(matrix):
    _, result = matrix
    shapes = {(b, n) for b in (1, 4) for n in (4, 8)}
    by_backend = {}
    for row in result["rows"]:
        by_backend.setdefault(row["backend"], set()).add((row["batch"], row["length"]))
        assert row["n"] >= 3 and row["first_call_ms"] > 0 and row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput_per_s"] == pytest.approx(row["batch"] * 1000 / row["mean_ms"])
        assert 0 < row["fraction_of_matmul_rate"] and row["process_peak_rss_mib"] > 0
    # int8 and optimized are CPU variants; fp16 is built for GPUs and not timed on the CPU
    assert by_backend == {name: shapes for name in ("pytorch-cpu-fp32", "onnxruntime-cpu-fp32",
                                                     "onnxruntime-cpu-optimized", "onnxruntime-cpu-int8")}


def test_backends_that_cannot_run_are_listed_with_the_reason(matrix):
    _, result = matrix
    reasons = {u["backend"]: u["reason"] for u in result["unavailable"]}
    assert reasons["pytorch-cuda-fp32"] == "bench.cuda is false"
    assert "onnxruntime-cpu-fp16" not in reasons  # not wanted on the CPU, so not missing either


def test_encoder_flops_grow_with_caption_length(matrix):
    student, result = matrix
    assert 0 < encoder_flops(student, 4) < encoder_flops(student, 8) < 3 * encoder_flops(student, 4)
    assert result["rows"][0]["encoder_gflop_per_caption"] > 0
