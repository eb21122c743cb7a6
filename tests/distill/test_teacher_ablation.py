import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import ConfigError, load_config
from distill.cli import main
from tests.conftest import assert_layout_names, tiny_config_dict


def test_ablate_teachers_fits_each_variant_and_writes_the_table(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"] = {**cfg["teacher"], "image_tower": {**cfg["teacher"]["image_tower"], "freeze": True},
                      "train": {**cfg["teacher"]["train"], "epochs": 1}}
    cfg["experiment"] = {"seeds": [0], "teacher_variants": {
        "top": ["teacher.image_tower.train_top=1", "teacher.image_tower.lr_scale=0.1"],
        "mlp": ["teacher.projection=mlp"]}, "teacher_ensembles": {"pair": ["configured", "top"]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["data", str(tmp_path / "tiny.yaml")]) == 0
    assert main(["ablate-teachers", str(tmp_path / "tiny.yaml"), "--seeds", "0", "1", "--variants", "configured",
                 "top", "pair"]) == 0
    table = json.loads((tmp_path / "run/ablation/teachers.json").read_text())
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == ["configured", "top", "pair"] and table["seeds"] == [0, 1]
    pair = rows.pop("pair")  # weights chosen on the selection split, per seed
    assert [sorted(s["weights"]) for s in pair["selection"]] == [["configured", "top"]] * 2
    assert all(abs(sum(s["weights"].values()) - 1) < 1e-9 for s in pair["selection"])
    assert len(pair["per_seed"]) == 2 and pair["terms"][0] == "ensemble of configured, top"
    assert rows["top"]["terms"] == ["teacher.image_tower.train_top=1", "teacher.image_tower.lr_scale=0.1"]
    for name, row in rows.items():
        assert len(row["per_seed"]) == 2 and all(s["epoch"] == 1 for s in row["selection"])
        for seed in (0, 1):
            run = tmp_path / "run/teachers" / f"{name}-seed{seed}"
            if (name, seed) == ("configured", 0):  # the run's own teacher
                assert not run.exists() and (tmp_path / "run/teacher/model.safetensors").is_file()
                continue
            assert (run / "teacher/model.safetensors").is_file()
            assert (run / "features").resolve() == (tmp_path / "run/features").resolve()  # caches shared by key
    fitted = json.loads((tmp_path / "run/teachers/top-seed0/teacher/model.json").read_text())
    assert fitted["config"]["image_tower"]["train_top"] == 1
    assert rows["top"]["per_seed"][0] != rows["configured"]["per_seed"][0]
    assert rows["top"]["rsum_vs_contrastive"]["delta"] == pytest.approx(
        rows["top"]["mean"]["rsum"] - rows["configured"]["mean"]["rsum"])
    markdown = (tmp_path / "run/ablation/teachers.md").read_text()
    assert "## Teacher ablation" in markdown and "| top | teacher.image_tower.train_top=1" in markdown
    assert (tmp_path / "run/ablation/teacher_curves.png").is_file()
    assert_layout_names(tmp_path / "run")


@pytest.mark.parametrize("variants, message", [
    ({"configured": ["teacher.margin=0.1"]}, "not a usable name"),
    ({"wide": ["student.embed_dim=64"]}, "not a teacher.KEY=VALUE override"),
])
def test_bad_teacher_variants_are_named(variants, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"experiment.teacher_variants={json.dumps(variants)}"])


@pytest.mark.parametrize("ensembles, message", [
    ({"pair": ["configured", "nope"]}, "needs two or more distinct teachers"),
    ({"pair": ["configured"]}, "needs two or more distinct teachers"),
    ({"wide": ["configured", "wide"]}, "'wide' is already a teacher's name"),
])
def test_bad_teacher_ensembles_are_named(ensembles, message):
    variants = json.dumps({"wide": ["teacher.embed_dim=64"]})
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"experiment.teacher_variants={variants}", f"experiment.teacher_ensembles={json.dumps(ensembles)}"])


def test_ablate_teachers_resume_continues_an_interrupted_variant_fit(tmp_path, caplog):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["teacher"] = {**cfg["teacher"], "image_tower": {**cfg["teacher"]["image_tower"], "freeze": True},
                      "train": {**cfg["teacher"]["train"], "epochs": 2, "keep_checkpoints": 2}}
    cfg["experiment"] = {"seeds": [0], "teacher_variants": {"mlp": ["teacher.projection=mlp"]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    args = ["ablate-teachers", str(tmp_path / "tiny.yaml"), "--seeds", "0", "--variants", "mlp"]
    assert main(["data", str(tmp_path / "tiny.yaml")]) == 0 and main(args) == 0
    fit = tmp_path / "run/teachers/mlp-seed0/teacher"
    whole = load_file(str(fit / "model.safetensors"))
    shutil.rmtree(fit / "checkpoints/epoch_002")  # as if stopped after epoch 1
    (fit / "stage.json").unlink()
    (fit / "model.safetensors").unlink()
    caplog.set_level("INFO", logger="itr_distill")
    assert main([*args, "--resume"]) == 0
    assert "teacher: resuming after epoch 1" in caplog.text
    resumed = load_file(str(fit / "model.safetensors"))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
