"""Teacher and student with frozen trunks and trainable tops (`train_top`), GPO pooling and online KD,
through fit, distillation and export: only the tops and heads move, and the export reproduces them."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import distill.stages
import distill.student_stage
from core.config import load_config
from core.seeding import seed_everything
from distill.cli import main
from distill.models import load_model, new_model
from distill.variants import variant_config
from tests.conftest import tiny_config_dict


def _cut(section: dict) -> dict:
    return {**section, "image_tower": {**section["image_tower"], "freeze": True, "train_top": 1, "lr_scale": 0.5},
            "text_tower": {**section["text_tower"], "freeze": True, "train_top": 1, "lr_scale": 0.5}}


def test_cut_towers_train_only_their_tops_and_export(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["experiment"] = {"seeds": [0]}
    cfg["teacher"] = _cut(cfg["teacher"])
    cfg["student"] = {**_cut(cfg["student"]), "image_pooling": "gpo", "text_pooling": "gpo"}
    cfg["scores"] = {"top_k": 8, "kd_source": "online"}
    config = tmp_path / "cut.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for stage in (["data"], ["teacher", "fit"], ["distill", "--variant", "baseline"], ["teacher", "score", "--cache", "top-k"], ["distill"],
                  ["export"]):
        assert main([*stage, str(config)]) == 0, stage
    run = tmp_path / "run"
    loaded = load_config(config)
    student_dir = run / "students" / "distilled-seed0"
    trained = load_file(student_dir / "model.safetensors")
    seed_everything(0)
    fresh = new_model("student", variant_config(loaded, "distilled"), str(next((run / "text_models").iterdir())), None)
    student = load_model(student_dir, torch.device("cpu"))
    for tower_name in ("image_tower", "text_tower"):
        tower = getattr(student, tower_name)
        top = {id(p) for m in tower.top_modules() for p in m.parameters()}
        names = {id(p): f"{tower_name}.{n}" for n, p in tower.named_parameters()}
        moved = {names[i]: not torch.equal(trained[names[i]], fresh.state_dict()[names[i]]) for i in names}
        assert any(moved[names[i]] for i in top), f"{tower_name}: the top did not train"
        assert not any(v for i, v in ((i, moved[names[i]]) for i in names) if i not in top), \
            f"{tower_name}: a trunk weight moved"
    first = json.loads((student_dir / "train_log.jsonl").read_text().splitlines()[0])
    assert first["kd"] > 0  # online KD from the teacher's token store of its cut towers
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["parity"]["passed"]


class _Stopped(Exception):
    """Raised by the stand-in for the first frozen-trunk pass: the test needs nothing after it."""


@pytest.mark.parametrize("stage", ["teacher fit", "distill baseline"])
def test_a_new_model_is_on_the_run_device_before_its_frozen_trunks_run(tmp_path, monkeypatch, stage):
    """A model is built on the CPU; the frozen-trunk caches run it on the run's device before `fit` moves
    it there (on a GPU: 'Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor)'). A CPU
    has one device, so the test records where the stage sends the model before the first trunk pass."""
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"], cfg["student"] = _cut(cfg["teacher"]), _cut(cfg["student"])
    config = tmp_path / "cut.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["data", str(config)]) == 0
    module = distill.stages if stage == "teacher fit" else distill.student_stage
    moves: list[object] = []
    build = module.new_model

    def new_model_recording_moves(*args, **kwargs):
        model = build(*args, **kwargs)
        move = model.to
        model.to = lambda *a, **k: (moves.append(a[0] if a else k.get("device")), move(*a, **k))[1]
        return model

    def first_trunk_pass(model, *args, **kwargs):
        assert moves == [torch.device("cpu")], f"{stage}: the trunk ran before the model was moved ({moves})"
        raise _Stopped

    monkeypatch.setattr(module, "new_model", new_model_recording_moves)
    monkeypatch.setattr(module, "frozen_for", first_trunk_pass)
    monkeypatch.setattr(module, "frozen_shared", first_trunk_pass)
    loaded = load_config(config)
    with pytest.raises(_Stopped):
        if stage == "teacher fit":
            distill.stages.stage_teacher_fit(loaded)
        else:
            distill.student_stage.stage_distill(loaded, "baseline", 0)
