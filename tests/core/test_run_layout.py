from pathlib import Path

import pytest

from core.run_layout import ModelDir, RunPaths, describe, stamp, up_to_date


@pytest.mark.parametrize("path", ["config.yaml", "teacher/model.safetensors", "teacher/checkpoints/epoch_003/state.json",
                                  "students/distilled-seed2/train_log.jsonl", "scores/train/scores.npy",
                                  "scores/train-topk/t2i_scores.npy", "teacher_tokens/val/manifest.json",
                                  "teachers/lite2-seed1/teacher/model.json", "teachers/lite2-seed1/features/k/tokens.npy",
                                  "teacher_ensemble/ensemble.json", "figures/accuracy_vs_latency.png",
                                  "ablation/teachers.md", "bench/matrix.csv"])
def test_the_layout_names_what_stages_write(path):
    assert describe(path)


@pytest.mark.parametrize("path", ["notes.txt", "teacher/weights.bin", "students/distilled/model.json",
                                  "teachers/lite2/teacher/model.json", "eval/other.json", "figures/plot.svg"])
def test_anything_else_is_not_named(path):
    assert describe(path) is None


def test_paths_are_the_ones_the_layout_describes(tmp_path):
    paths = RunPaths(tmp_path)
    named = [paths.config, paths.eval_results, paths.bench, paths.ensemble_spec, paths.student_ablation,
             paths.teacher_ablation, paths.report, paths.report_data, paths.stage_log,
             ModelDir(paths.student("baseline", 0)).weights, ModelDir(paths.teacher).checkpoints / "epoch_003/state.json",
             paths.scores("train") / "scores.npy", paths.topk_scores("train") / "manifest.json",
             RunPaths(paths.teacher_variant("tops", 1)).config]
    assert all(describe(p.relative_to(tmp_path)) for p in named)


def test_a_stamp_says_what_a_directory_was_made_from(tmp_path: Path):
    assert not up_to_date(tmp_path, {"a": 1})
    stamp(tmp_path, {"a": 1})
    assert up_to_date(tmp_path, {"a": 1}) and not up_to_date(tmp_path, {"a": 2})
