"""Checkpoints resume only when complete, undamaged and made by the same run; resuming is exact."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from core.config import TrainConfig
from distill import checkpoints
from distill.loop import Recipe, RunSpec, TrainData, fit
from tests.conftest import build_tiny
from tests.distill.test_loop import contrastive_only

SETTINGS = TrainConfig(epochs=3, batch_size=8, warmup_steps=1, eval_every=0, select="last", keep_checkpoints=3,
                       batching="lexical")


def _train(text_model_dir, splits, out, resume=False, identity="run"):
    torch.manual_seed(0)
    model = build_tiny("student", text_model_dir)
    result = fit(model, Recipe(contrastive_only()), TrainData(splits["train"], model.image_tower.preprocess()), SETTINGS,
                 RunSpec(out, 0, torch.device("cpu"), identity=identity, resume=resume, progress=False))
    return load_file(str(result.weights)), result.history


@pytest.fixture(scope="module")
def trained(text_model_dir, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("alone")
    weights, history = _train(text_model_dir, splits, out)
    return out, weights, history


def test_resuming_from_an_earlier_epoch_ends_with_the_same_weights_and_log(trained, text_model_dir, splits, tmp_path):
    alone, weights, history = trained
    shutil.copytree(alone, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "epoch_003")
    shutil.rmtree(tmp_path / "checkpoints" / "epoch_002")
    (tmp_path / "model.safetensors").unlink()
    resumed, resumed_history = _train(text_model_dir, splits, tmp_path, resume=True)
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == len((alone / "train_log.jsonl").read_text().splitlines())


def test_damaged_or_foreign_checkpoints_are_skipped_with_a_reason(trained, tmp_path, caplog):
    alone = trained[0]
    root = tmp_path / "checkpoints"
    shutil.copytree(alone / "checkpoints", root)
    with open(root / "epoch_003" / "optimizer.pt", "ab") as f:
        f.write(b"\0")
    state = json.loads((root / "epoch_002" / "state.json").read_text())
    (root / "epoch_002" / "state.json").write_text(json.dumps({**state, "identity": "another run"}))
    with caplog.at_level("WARNING", logger="itr_distill"):
        path, found = checkpoints.latest(root, "run")
    assert path.name == "epoch_001" and found["epoch"] == 1
    assert "optimizer.pt is missing or does not match its recorded SHA-256" in caplog.text
    assert "made by another configuration, dataset or seed" in caplog.text
    assert checkpoints.latest(root, "a run never trained") is None
    (root / "epoch_001" / "state.json").write_text("{")  # torn: the last candidate goes too
    with caplog.at_level("WARNING", logger="itr_distill"):
        assert checkpoints.latest(root, "run") is None
    assert "state.json: not valid JSON" in caplog.text


def test_without_resume_a_run_starts_over(trained, text_model_dir, splits, tmp_path):
    alone, weights, _ = trained
    shutil.copytree(alone / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "epoch_002" / "model.safetensors").write_bytes(b"junk")  # would fail a resume
    again, _ = _train(text_model_dir, splits, tmp_path)
    assert all(torch.equal(again[k], weights[k]) for k in weights)
