from core.io import write_json
from eval.records import EvalResults
from eval.report import summarise, write_report


def _metrics(rsum: float) -> dict:
    base = {k: rsum / 6 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
    return {**base, "i2t_medr": 1.0, "i2t_meanr": 1.0, "t2i_medr": 1.0, "t2i_meanr": 1.0, "rsum": rsum}


RESULTS = {"split": "test", "folds": 1, "gallery_images": 10, "systems": [
    {"name": "teacher", "group": "teacher", "seed": 0, "metrics": _metrics(300.0)},
    {"name": "baseline-seed0", "group": "baseline", "seed": 0, "losses": ["contrastive"], "metrics": _metrics(200.0)},
    {"name": "baseline-seed1", "group": "baseline", "seed": 1, "losses": ["contrastive"], "metrics": _metrics(220.0)},
    {"name": "distilled-seed0", "group": "distilled", "seed": 0, "losses": ["contrastive", "kd"], "metrics": _metrics(250.0)},
    {"name": "onnx-fp32", "group": "onnx-fp32", "variant": "fp32", "seed": None, "source": "distilled-seed0",
     "metrics": _metrics(250.0), "recall_difference_vs_pytorch": 0.0, "r1_drop_vs_pytorch": 0.0, "r1_drop_bound": 0.0,
     "rank_difference_vs_pytorch": 0.0},
    {"name": "onnx-int8", "group": "onnx-int8", "variant": "int8", "seed": None, "source": "distilled-seed0",
     "metrics": _metrics(247.0), "recall_difference_vs_pytorch": 3.0, "r1_drop_vs_pytorch": 2.5, "r1_drop_bound": 2.0,
     "rank_difference_vs_pytorch": 1.0},
]}
BENCH = {"machine": {"cpu": "cpu", "cpu_count": 2, "memory_gib": 1, "gpu": None, "platform": "linux"}, "rows": [
    {"measure": "retrieval", "system": "teacher", "backend": "pytorch", "device": "cpu", "p50_ms": 40.0},
    {"measure": "retrieval", "system": "student", "backend": "pytorch", "device": "cpu", "p50_ms": 4.0},
    {"measure": "retrieval", "system": "student", "backend": "onnxruntime", "variant": "fp32", "device": "cpu", "p50_ms": 1.0},
    {"measure": "retrieval", "system": "student", "backend": "onnxruntime", "variant": "int8", "device": "cpu", "p50_ms": 0.8},
    {"measure": "caption_encoding", "system": "student", "backend": "pytorch", "device": "cpu", "p50_ms": 3.0, "p95_ms": 3.5},
    {"measure": "image_encoding", "system": "student", "backend": "onnxruntime", "variant": "int8", "device": "cpu",
     "batch": 32, "p50_ms": 64.0, "per_image_ms": 2.0},
]}


def test_summary_groups_seeds_and_computes_speedups():
    s = summarise(EvalResults.from_dict(RESULTS), BENCH)
    rows = {r["group"]: r for r in s["systems"]}
    assert [r["group"] for r in s["systems"]] == ["teacher", "baseline", "distilled", "onnx-fp32", "onnx-int8"]
    assert rows["baseline"]["mean"]["rsum"] == 210.0 and rows["baseline"]["std"]["rsum"] == 10.0
    assert rows["teacher"]["speedup_vs_teacher"] == 1.0
    assert rows["baseline"]["speedup_vs_teacher"] == 10.0
    assert rows["onnx-fp32"]["speedup_vs_teacher"] == 40.0 and rows["onnx-int8"]["speedup_vs_teacher"] == 50.0
    assert s["checks"] == {"teacher_rsum_above_baseline": True, "distilled_rsum_above_baseline": True,
                           "onnx-fp32_r1_drop_within_0": True, "onnx-int8_r1_drop_within_2": False}


def test_report_files(tmp_path):
    write_json(tmp_path / "eval" / "results.json", RESULTS)
    write_json(tmp_path / "bench" / "latency.json", BENCH)
    write_report(tmp_path, "itr-distill run x.yaml")
    md = (tmp_path / "report.md").read_text()
    assert "| Teacher: SCAN cross attention | 0 |" in md
    assert "210.0 ± 10.0" in md and "40.0x" in md
    assert "| ONNX student int8 (distilled-seed0, onnxruntime) |" in md and "onnx-int8_r1_drop_within_2: NO" in md
    assert "| onnxruntime | int8 | cpu | 32 | 64.00 | 2.00 |" in md  # image encoding: per call and per image
    assert "Reproduce: `itr-distill run x.yaml`" in md
    assert (tmp_path / "report.json").is_file()


def test_report_without_bench(tmp_path):
    write_json(tmp_path / "eval" / "results.json", RESULTS)
    s = write_report(tmp_path, "cmd")
    assert all(r["latency_p50_ms"] is None for r in s["systems"])


def test_report_assembles_scaling_matrix_and_figures(tmp_path):
    scaling_rows = [{"system": "student", "method": "exact-numpy", "gallery": n, "measured": True, "p50_ms": 0.1 + 1e-5 * n}
                    for n in (1000, 10000)]
    scaling_rows += [{"system": "teacher", "method": "scan-pytorch-cpu", "gallery": 1000, "measured": True, "p50_ms": 10.0},
                     {"system": "teacher", "method": "scan-pytorch-cpu", "gallery": 10000, "measured": False, "p50_ms": 100.0,
                      "reason": "too big"}]
    from eval.scaling import cost_model, ratios

    scaling = {"rows": scaling_rows, "cost_model": cost_model(scaling_rows, 50.0), "ratios": ratios(scaling_rows),
               "usable_ms": 50.0, "embedding_dim": 8, "teacher_tokens": {"regions": 4, "dim": 16}}
    matrix = {"rows": [{"backend": "onnxruntime-cpu-fp32", "batch": b, "length": 8, "p50_ms": 1.0, "p99_ms": 2.0,
                        "throughput_per_s": 100.0 * b, "fraction_of_matmul_rate": 0.1} for b in (1, 4)],
              "settings": {"caption_lengths": [8], "batch_sizes": [1, 4]}}
    write_json(tmp_path / "eval" / "results.json", RESULTS)
    write_json(tmp_path / "bench" / "latency.json", {**BENCH, "scaling": scaling, "matrix": matrix})
    summary = write_report(tmp_path, "cmd")
    md = (tmp_path / "report.md").read_text()
    assert "d = 8" in md and "R = 4 regions" in md and "| teacher | scan-pytorch-cpu | 10.00 | 100.00 (extrapolated) |" in md
    assert "| teacher / student (cpu) | ratio | 91x | 500x (extrapolated) |" in md  # 10 / 0.11, 100 / 0.2
    assert "| onnxruntime-cpu-fp32 | 4 | 1.000 | 2.000 | 400 | 10.0% |" in md
    assert summary["figures"] == {"accuracy": "figures/accuracy_vs_latency.png", "gallery": "figures/latency_vs_gallery.png"}
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in summary["figures"].values())


def test_the_timed_students_latency_goes_only_to_rows_of_its_kind():
    """bench times the export's source: with a pack exported, the single seeds' rows get no latency (they
    run one trunk top and head, the pack several), and with one seed exported the pack's row gets none."""
    pack = {"name": "distilled-pack", "group": "distilled-pack", "seed": None, "losses": ["contrastive", "kd"],
            "metrics": _metrics(260.0)}
    results = EvalResults.from_dict({**RESULTS, "systems": [*RESULTS["systems"], pack]})
    for packed, with_latency in ((True, {"distilled-pack"}), (False, {"baseline", "distilled"})):
        rows = {r["group"]: r for r in summarise(results, {**BENCH, "student_packed": packed})["systems"]}
        students = {g for g in ("baseline", "distilled", "distilled-pack") if rows[g]["latency_p50_ms"] is not None}
        assert students == with_latency, packed
        assert rows["teacher"]["latency_p50_ms"] == 40.0 and rows["onnx-fp32"]["latency_p50_ms"] == 1.0
