"""A cross-encoder teacher through the stages a run uses: fit, token store, both score caches,
a distilled student reading them, and the evaluation that says how the teacher was scored."""
import json

import numpy as np

from tests.conftest import run_stage_chain, tiny_config_dict


def test_cross_teacher_supervises_a_student_and_is_evaluated_on_its_first_stage(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"] = {**cfg["teacher"], "matching": "cross", "train": {**cfg["teacher"]["train"], "epochs": 1},
                      "cross": {"layers": 1, "heads": 2, "ff_dim": 32, "negatives": 2, "eval_top_k": 4}}
    cfg["student"]["train"] = {**cfg["student"].get("train", {}), "epochs": 1}
    cfg["experiment"] = {"seeds": [0]}
    run_stage_chain(cfg, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    history = json.loads((run / "teacher/training.json").read_text())["history"]
    assert set(history[0]["loss"]) >= {"hinge", "match"}
    scores = np.load(run / "scores/train/scores.npy", mmap_mode="r")
    assert scores.shape == (48, 240) and np.isfinite(scores).all()
    teacher = next(s for s in json.loads((run / "eval/results.json").read_text())["systems"] if s["name"] == "teacher")
    assert teacher["matching"] == "cross-encoder, 1 layer(s)"
    assert teacher["scored"] == "top-4 of its global score, re-ranked"
