"""Under torchrun: `ablate` and `ablate-teachers` shard their trainings over the ranks, and rank 0 alone
evaluates and writes the table (a step run on both ranks would log its line twice)."""
import json

import yaml

from distill.cli import main
from tests.conftest import tiny_config_dict
from tests.distill.test_ddp_teacher import _torchrun


def _config(tmp_path, **extra) -> str:
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["experiment"] = {"seeds": [0], **extra}
    for model in ("teacher", "student"):
        cfg[model] = {**cfg[model], "train": {**cfg[model]["train"], "epochs": 1}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return str(config)


def test_ablate_under_torchrun_trains_on_every_rank_and_evaluates_once(tmp_path):
    done = _torchrun("ablate", _config(tmp_path), "--variants", "baseline", "kd")
    log = done.stderr + done.stdout
    once = ["generating synthetic scenes", "pairs of train into", "teacher: epoch 1 selected",
            "student baseline-seed0: epoch 1", "student kd-seed0: epoch 1", "ablation baseline seed 0: rsum",
            "ablation kd seed 0: rsum", "ablation table written to"]
    assert {line: log.count(line) for line in once} == {line: 1 for line in once}
    assert "fitting over 2 torchrun ranks" in log  # the teacher fit sharded
    table = json.loads((tmp_path / "run/ablation/ablation.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["baseline", "kd"]


def test_ablate_teachers_under_torchrun_fits_an_unnamed_member_on_every_rank(tmp_path):
    """The ensemble's member `mlp` is not named: it is fitted by every rank before rank 0 evaluates."""
    config = _config(tmp_path, teacher_variants={"mlp": ["teacher.projection=mlp"]},
                     teacher_ensembles={"pair": ["configured", "mlp"]})
    assert main(["data", config]) == 0  # as `ablate-teachers` asks
    done = _torchrun("ablate-teachers", config, "--variants", "configured", "pair")
    log = done.stderr + done.stdout
    once = ["teacher ablation configured seed 0: rsum", "teacher ensemble pair seed 0: weights",
            "teacher ablation table written to"]
    assert {line: log.count(line) for line in once} == {line: 1 for line in once}
    assert log.count("fitting over 2 torchrun ranks") == 2  # configured and mlp, each sharded
    table = json.loads((tmp_path / "run/ablation/teachers.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["configured", "pair"]
