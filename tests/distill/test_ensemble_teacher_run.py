"""A run that distils from a teacher ensemble (`teacher.ensemble`): members fitted in their own run
directories, weights chosen on the selection split, and every stage reading the combined score."""
import json

import numpy as np
import pytest
import torch
import yaml

from core.checkpoint import save_weights
from core.config import ConfigError, load_config
from core.io import sha256_file
from distill.cli import main
from distill.models import load_model
from distill.stages import load_split, load_teacher, teacher_tokens
from distill.teacher_runs import variant_run
from eval.metrics import retrieval_metrics
from teacher.ensemble import Standardised, combine
from teacher.scoring import score_all
from tests.conftest import assert_layout_names, run_stage_chain, tiny_config_dict

CPU = torch.device("cpu")


def _member_scores(cfg, spec, which: str) -> np.ndarray:
    """The ensemble's scores of a split recomputed from each member alone."""
    split = load_split(cfg, which)
    scores = []
    for member in spec["members"]:
        teacher, store = teacher_tokens(variant_run(cfg, member["name"], cfg.seed), which, split, CPU)
        scores.append(score_all(teacher, store.images, store.captions, progress=False))
    return combine(scores, [Standardised(m["weight"], m["mean"], m["std"]) for m in spec["members"]])


def test_a_student_distils_from_an_ensemble_and_eval_reports_it(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"] = {**cfg["teacher"], "ensemble": "pair", "train": {**cfg["teacher"]["train"], "epochs": 1}}
    cfg["student"]["train"] = {**cfg["student"].get("train", {}), "epochs": 1}
    cfg["experiment"] = {"seeds": [0], "teacher_variants": {"mlp": ["teacher.projection=mlp"]},
                         "teacher_ensembles": {"pair": ["configured", "mlp"]}}
    config = run_stage_chain(cfg, tmp_path / "tiny.yaml")
    run, loaded = tmp_path / "run", load_config(config)
    spec = json.loads((run / "teacher_ensemble/ensemble.json").read_text())
    assert [m["name"] for m in spec["members"]] == ["configured", "mlp"] and spec["selection"]["split"] == "val"
    assert sum(m["weight"] for m in spec["members"]) == pytest.approx(1.0)
    assert (run / "teachers/mlp-seed0/teacher/model.safetensors").is_file()
    assert spec["members"][1]["sha256"] == sha256_file(run / "teachers/mlp-seed0/teacher/model.safetensors")

    manifest = json.loads((run / "scores/train/manifest.json").read_text())
    assert manifest["teacher_checkpoint_sha256"] == sha256_file(run / "teacher_ensemble/ensemble.json")
    cached = np.load(run / "scores/train/scores.npy", mmap_mode="r")
    np.testing.assert_allclose(cached, _member_scores(loaded, spec, "train"), atol=1e-5)
    student = json.loads((run / "students/distilled-seed0/stage.json").read_text())["key"]
    assert student["teacher"] == manifest["teacher_checkpoint_sha256"]

    teacher = next(s for s in json.loads((run / "eval/results.json").read_text())["systems"] if s["name"] == "teacher")
    assert teacher["matching"].startswith("ensemble pair: ") and teacher["scored"] == "every pair"
    expected = retrieval_metrics(_member_scores(loaded, spec, "test"), 5)
    assert teacher["metrics"]["rsum"] == pytest.approx(expected["rsum"])
    assert_layout_names(run)

    timed = load_teacher(loaded, CPU)  # what `bench` times: the ensemble, not the configured member alone
    assert timed.member_names == ["configured", "mlp"]
    assert [(t.weight, t.mean, t.std) for t in timed.terms] == [(m["weight"], m["mean"], m["std"]) for m in spec["members"]]


def test_a_member_refitted_after_the_weights_were_chosen_is_refused_until_they_are_chosen_again(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"] = {**cfg["teacher"], "ensemble": "pair", "train": {**cfg["teacher"]["train"], "epochs": 1}}
    cfg["experiment"] = {"seeds": [0], "teacher_variants": {"wide": ["teacher.embed_dim=48"]},
                         "teacher_ensembles": {"pair": ["configured", "wide"]}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for stage in (["data"], ["teacher", "fit"]):
        assert main([*stage, str(config)]) == 0, stage
    loaded = load_config(config)
    member = tmp_path / "run/teachers/wide-seed0/teacher"
    refitted = load_model(member)
    with torch.no_grad():
        next(refitted.parameters()).add_(0.1)
    save_weights(refitted, member / "model.safetensors")
    with pytest.raises(ValueError, match="refitted since the weights"):
        teacher_tokens(loaded, "val", load_split(loaded, "val"), CPU)
    assert main(["teacher", "fit", str(config)]) == 0  # the weights are chosen again for the refitted member
    spec = json.loads((tmp_path / "run/teacher_ensemble/ensemble.json").read_text())
    assert spec["members"][1]["sha256"] == sha256_file(member / "model.safetensors")
    teacher, _ = teacher_tokens(loaded, "val", load_split(loaded, "val"), CPU)
    assert len(teacher.members) == sum(m["weight"] > 0 for m in spec["members"])


def test_an_unknown_ensemble_is_named():
    with pytest.raises(ConfigError, match="'trio' is not an experiment.teacher_ensembles entry"):
        load_config(None, ["teacher.ensemble=trio"])
