import json

import pytest
import torch
from safetensors.torch import load_file

from core.config import LossesConfig, StudentConfig, TrainConfig
from distill import checkpoints
from distill.loop import Recipe, RunSpec, TrainData, fit
from distill.terms import LossTerm, Objective, student_objective
from tests.conftest import build_tiny

SETTINGS = TrainConfig(epochs=2, batch_size=8, warmup_steps=1, select="best_val", keep_checkpoints=0)
CPU = torch.device("cpu")


def contrastive_only() -> Objective:
    cfg = LossesConfig()
    cfg.kd.weight = cfg.cached_kd.weight = cfg.concept.weight = 0.0
    return student_objective(StudentConfig(embed_dim=32, losses=cfg))


def test_fit_writes_checkpoints_logs_and_the_selected_weights(tiny_student, splits, tmp_path):
    pre = tiny_student.image_tower.preprocess()
    evals = iter([{"rsum": 10.0}, {"rsum": 5.0}])
    result = fit(tiny_student, Recipe(contrastive_only()), TrainData(splits["train"], pre), SETTINGS,
                 RunSpec(tmp_path, seed=0, device=CPU, progress=False), evaluate=lambda m: next(evals))
    assert result.selected_epoch == 1 and result.selected_metrics == {"rsum": 10.0}
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["epoch_001", "epoch_002"]  # the selected one and the last
    assert set(p.name for p in (tmp_path / "checkpoints" / "epoch_002").iterdir()) >= {
        "model.safetensors", "objective.safetensors", "optimizer.pt", "state.json"}
    final, selected = load_file(str(result.weights)), load_file(str(tmp_path / "checkpoints/epoch_001/model.safetensors"))
    assert all(torch.equal(final[k], selected[k]) for k in final)
    steps = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {"contrastive", "align", "total", "lr"} <= set(steps[0])
    assert json.loads((tmp_path / "training.json").read_text())["selected_epoch"] == 1
    state = torch.load(tmp_path / "checkpoints/epoch_002/optimizer.pt", weights_only=True)
    assert {"optimizer", "scheduler"} <= set(state)


def test_same_seed_same_weights(text_model_dir, splits, tmp_path):
    runs = []
    for name in ("a", "b"):
        model = build_tiny("student", text_model_dir)
        settings = TrainConfig(epochs=1, batch_size=8, warmup_steps=1, eval_every=0, select="last")
        data = TrainData(splits["train"], model.image_tower.preprocess())
        runs.append(load_file(str(fit(model, Recipe(contrastive_only()), data, settings,
                                      RunSpec(tmp_path / name, 3, CPU, progress=False)).weights)))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


class ExplodingIn(LossTerm):
    """NaN from epoch `epoch` on."""
    name = "exploding"

    def __init__(self, epoch: int):
        super().__init__(1.0)
        self.explode_at, self.epoch = epoch, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, out, batch, ctx):
        return out["sims"].mean() * (float("nan") if self.epoch >= self.explode_at else 1.0)


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tiny_student, splits, tmp_path):
    settings = TrainConfig(epochs=3, batch_size=8, eval_every=0, select="last")
    with pytest.raises(FloatingPointError, match=r"\['exploding'\] at epoch 2, step \d+; last good checkpoint: .*checkpoints"):
        fit(tiny_student, Recipe(Objective([ExplodingIn(2)])), TrainData(splits["train"], tiny_student.image_tower.preprocess()),
            settings, RunSpec(tmp_path, 0, CPU, identity="run", progress=False))
    assert not (tmp_path / "model.safetensors").exists()
    path, state = checkpoints.latest(tmp_path / "checkpoints", "run")
    assert path.name == "epoch_001" and state["epoch"] == 1  # complete, its hashes intact


def test_distillation_needs_teacher_scores(tiny_student, splits, tmp_path):
    losses = LossesConfig()
    losses.kd.teacher_temperature = losses.cached_kd.teacher_temperature = 0.1
    with pytest.raises(ValueError, match="no teacher scores"):
        fit(tiny_student, Recipe(student_objective(StudentConfig(embed_dim=32, losses=losses))),
            TrainData(splits["train"], tiny_student.image_tower.preprocess()), SETTINGS,
            RunSpec(tmp_path, 0, CPU, progress=False))


def test_bf16_autocasts_on_cuda_only_so_cpu_training_is_unchanged(text_model_dir, splits, tmp_path):
    runs = []
    for bf16 in (False, True):
        model = build_tiny("student", text_model_dir)
        settings = TrainConfig(epochs=1, batch_size=8, warmup_steps=1, eval_every=0, select="last", bf16=bf16)
        data = TrainData(splits["train"], model.image_tower.preprocess())
        runs.append(load_file(str(fit(model, Recipe(contrastive_only()), data, settings,
                                      RunSpec(tmp_path / str(bf16), 3, CPU, progress=False)).weights)))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
