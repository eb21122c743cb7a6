import json
import subprocess
import sys

import pytest
import yaml

from distill.cli import main
from tests.conftest import assert_layout_names, tiny_config_dict


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(root / "run", root / "data")))
    assert main(["run", str(config)]) == 0
    return config, root / "run"


def test_run_writes_every_stage_output(finished_run):
    _, run = finished_run
    for path in ("config.yaml", "data.json", "teacher/model.safetensors", "teacher/model.json", "scores/train/scores.npy",
                 "students/baseline-seed1/model.safetensors", "students/distilled-seed0/training.json",
                 "export/image_encoder.onnx", "export/text_encoder.onnx", "export/manifest.json",
                 "eval/results.json", "bench/latency.json", "report.md", "report.json"):
        assert (run / path).is_file(), path
    results = json.loads((run / "eval" / "results.json").read_text())
    names = [s["name"] for s in results["systems"]]
    assert names == ["teacher", "baseline-seed0", "distilled-seed0", "rerank-top10", "rerank-top50", "rerank-top100",
                     "baseline-seed1", "distilled-seed1", "onnx-fp32", "onnx-optimized", "onnx-fp16", "onnx-int8"]
    by_name = {s["name"]: s for s in results["systems"]}
    assert all(by_name["onnx-fp32"]["metrics"][k] == by_name["distilled-seed0"]["metrics"][k] for k in ("i2t_r1", "t2i_r1", "rsum"))
    assert by_name["onnx-fp32"]["recall_difference_vs_pytorch"] == 0.0
    assert by_name["onnx-int8"]["r1_drop_vs_pytorch"] <= by_name["onnx-int8"]["r1_drop_bound"] == 15.0
    # the tiny split has 16 images: from K = 16 on, t2i re-ranks every image, so its ranking no longer depends on K
    top50, top100 = by_name["rerank-top50"]["metrics"], by_name["rerank-top100"]["metrics"]
    assert all(top50[k] == top100[k] for k in top50 if k.startswith("t2i"))
    assert by_name["rerank-top10"]["source"] == "distilled-seed0" and by_name["rerank-top10"]["student_weight"] == 1.0
    report = (run / "report.md").read_text()
    assert "Teacher: SCAN t2i cross attention" in report and "speed-up vs teacher" in report and "Machine:" in report
    assert "Re-ranking: student top-10 (distilled-seed0), teacher re-ranks" in report
    bench = json.loads((run / "bench" / "latency.json").read_text())
    assert {r["system"] for r in bench["rows"] if r["measure"] == "retrieval"} >= {"rerank-top10", "rerank-top100"}
    for name, system in by_name.items():  # CLIP_benchmark files: the same recalls, as fractions; t2i = image retrieval
        record = json.loads((run / "eval" / "clip_benchmark" / f"{name}.json").read_text())
        assert record["model"] == name and record["task"] == "zeroshot_retrieval" and record["dataset"] == "synthetic_test"
        assert record["metrics"] == pytest.approx({f"{theirs}_retrieval_recall@{k}": system["metrics"][f"{ours}_r{k}"] / 100
                                                  for theirs, ours in (("image", "t2i"), ("text", "i2t")) for k in (1, 5, 10)})
    assert len(list((run / "eval" / "clip_benchmark").iterdir())) == len(by_name)
    assert_layout_names(run)


def test_report_shows_retrieval_examples_and_training_curves(finished_run):
    _, run = finished_run
    examples = json.loads((run / "eval/examples.json").read_text())
    assert examples["systems"] == ["teacher", "baseline-seed0", "distilled-seed0"]
    assert len(examples["t2i"]) == 4 and len(examples["i2t"]) == 2 and examples["image_paths"]
    report = (run / "report.md").read_text()
    for figure in ("examples_t2i", "examples_i2t", "training_curves"):
        assert f"(figures/{figure}.png)" in report and (run / "figures" / f"{figure}.png").is_file()


def test_bench_writes_matrix_scaling_and_figures(finished_run):
    import csv

    _, run = finished_run
    for path in ("bench/matrix.csv", "bench/scaling.csv", "bench/bench.md", "figures/accuracy_vs_latency.png",
                 "figures/latency_vs_gallery.png"):
        assert (run / path).is_file(), path
    for png in (run / "figures").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scaling = list(csv.DictReader((run / "bench" / "scaling.csv").open()))
    teacher = [r for r in scaling if r["system"] == "teacher"]
    assert [r["gallery"] for r in teacher] == ["16", "64", "256"]
    assert teacher[-1]["measured"] == "False" and "teacher_max_gib" in teacher[-1]["reason"]
    assert {r["method"] for r in scaling if r["system"] == "student"} >= {"exact-numpy", "faiss-flat"}
    assert "Not measured here: exact-torch-cuda (no CUDA device)" in (run / "bench" / "bench.md").read_text()
    report = (run / "report.md").read_text()
    for text in ("## Latency against gallery size", "Cost model.", "(extrapolated)", "figures/latency_vs_gallery.png",
                 "## Caption encoder", "onnxruntime-cpu-int8", "Image encoding (student; gallery indexing"):
        assert text in report, text


def test_each_stage_is_recorded_beside_its_plan(finished_run):
    """Before the rerun below, which records the stages it skips."""
    from distill.rehearsal import markdown, summarise

    config, run = finished_run
    result = summarise(config, run, None)
    stages = {r["stage"]: r for r in result["stages"]}
    assert list(stages)[:3] == ["data", "teacher fit", "distill baseline seed 0"] and list(stages)[-1] == "bench"
    assert "teacher score train" in stages and "distill distilled seed 1" in stages
    for name in ("teacher fit", "teacher score train", "distill distilled seed 0", "eval"):  # the plan counts exactly
        assert stages[name]["teacher_pairs"] == stages[name]["plan_teacher_pairs"], name
    assert stages["distill distilled seed 0"]["teacher_pairs"] == 0  # its KD reads the all-pairs cache
    assert min(stages[n]["teacher_pairs"] for n in ("teacher fit", "teacher score train", "eval")) > 0
    fit = stages["teacher fit"]
    assert fit["peak_rss_bytes"] >= fit["peak_anon_bytes"] >= fit["start_anon_bytes"] > 0 and fit["seconds"] > 0
    assert stages["teacher score train"]["written_bytes"] >= 48 * 240 * 4  # the all-pairs cache went to disk
    assert "| teacher fit |" in markdown(result)


def test_rerun_skips_up_to_date_stages(finished_run, caplog):
    config, run = finished_run
    before = (run / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(config)]) == 0
    assert (run / "teacher" / "model.safetensors").stat().st_mtime_ns == before


def test_stage_alone_from_the_run_dir(finished_run):
    _, run = finished_run
    (run / "eval" / "results.json").unlink()
    assert main(["eval", "--run-dir", str(run)]) == 0
    assert (run / "eval" / "results.json").is_file()
    assert main(["report", str(run)]) == 0


def test_changed_teacher_invalidates_the_score_cache(finished_run, tmp_path):
    from core.config import load_config
    from distill.student_stage import stage_distill
    from teacher.cache import ScoreCacheMismatch

    config, run = finished_run
    cfg = load_config(config, [f"run_dir={run}"])
    (run / "teacher" / "model.safetensors").write_bytes((run / "teacher" / "model.safetensors").read_bytes() + b" ")
    try:
        with pytest.raises(ScoreCacheMismatch, match="teacher_checkpoint_sha256"):
            stage_distill(cfg, "distilled", 0, force=True)
    finally:
        data = (run / "teacher" / "model.safetensors").read_bytes()[:-1]
        (run / "teacher" / "model.safetensors").write_bytes(data)


def test_one_eval_gives_several_protocols_and_the_plan_counts_its_pairs(finished_run, tmp_path):
    """`eval.folds: [1, 2]` on a copy of the run: every system has both protocols, the report a second
    table, and the teacher scores the whole matrix once (re-ranking and the examples read it); with [2]
    alone it scores the two diagonal blocks, then the re-ranked and example pairs. Both as the plan counts."""
    import shutil

    from core.config import load_config
    from distill.plan import make_plan
    from teacher.model import PairCounter

    _, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)

    def evaluate(folds: str) -> tuple[dict, int, int]:
        before = PairCounter.count
        assert main(["eval", "--run-dir", str(copy), "--set", f"eval.folds={folds}"]) == 0
        plan = make_plan(load_config(copy / "config.yaml"), ["eval"]).stages[0].teacher_pairs
        return json.loads((copy / "eval" / "results.json").read_text()), PairCounter.count - before, plan

    both, pairs, plan = evaluate("[1, 2]")
    assert both["folds"] == [1, 2] and pairs == plan
    for system in both["systems"]:
        assert system["metrics"] == system["metrics_by_folds"]["1"] and set(system["metrics_by_folds"]) == {"1", "2"}
    assert main(["report", str(copy)]) == 0
    assert "### 8 images (2 folds)" in (copy / "report.md").read_text()
    folds_only, pairs_only, plan_only = evaluate("[2]")
    assert folds_only["folds"] == [2] and pairs_only == plan_only != plan
    for system, two in zip(folds_only["systems"], both["systems"], strict=True):
        assert "metrics_by_folds" not in system and system["metrics"] == pytest.approx(two["metrics_by_folds"]["2"])


def test_bad_config_reports_all_problems_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "r"), "teacher": {"margn": 0.2}, "eval": {"folds": 0}}))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "teacher.margn: unknown key (did you mean 'margin'?)" in err and "eval.folds: must be > 0" in err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "distill", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("data", "teacher", "distill", "export", "eval", "bench", "report", "run", "search", "demo"):
        assert command in done.stdout


def test_generation_never_replaces_a_foreign_directory(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    assert main(["data", "--run-dir", str(tmp_path / "r"), "--set", f"data.path={mine}"]) == 1
    assert "refusing to replace" in capsys.readouterr().err
    assert (mine / "precious.txt").read_text() == "keep"
