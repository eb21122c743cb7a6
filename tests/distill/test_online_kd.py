"""In-batch KD fed by the teacher online (its token store) against the all-pairs cache, and plans that refuse."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distill.cli import main
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run with a teacher and its all-pairs cache of the training split."""
    root = tmp_path_factory.mktemp("online")
    cfg = tiny_config_dict(root / "run", root / "data")
    cfg["experiment"] = {"seeds": [0]}
    cfg["scores"] = {"top_k": 0}
    cfg["student"]["losses"] = {}
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for stage in (["data"], ["teacher", "fit"], ["teacher", "score"]):
        assert main([*stage, str(config)]) == 0
    return config, root / "run"


def _train(config, source):
    assert main(["distill", str(config), "--variant", "kd", "--force", "--set", f"scores.kd_source={source}"]) == 0
    student = config.parent / "run" / "students" / "kd-seed0"
    return load_file(student / "model.safetensors"), (student / "train_log.jsonl").read_text()


def test_a_student_trained_from_either_source_ends_with_the_same_weights(run, caplog):
    config, run_dir = run
    cached, cached_log = _train(config, "cache")
    online, online_log = _train(config, "online")
    assert (run_dir / "teacher_tokens" / "train" / "manifest.json").is_file()
    assert "kd" in json.loads(cached_log.splitlines()[0]) and "kd" in json.loads(online_log.splitlines()[0])
    assert cached.keys() == online.keys()
    for name in cached:  # relative too: batch-norm running variances reach ~10, where 1e-4 is float noise of training
        torch.testing.assert_close(cached[name], online[name], rtol=1e-4, atol=1e-4, msg=name)


def test_a_plan_over_its_memory_limit_is_refused_before_any_stage_runs(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["limits"] = {"memory_gib": 0.1}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert "limits.memory_gib" in err and "before any stage" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    assert main(["data", str(config)]) == 1  # a stage run alone refuses too
    assert "limits.memory_gib" in capsys.readouterr().err and not (tmp_path / "data").exists()


def test_an_all_pairs_cache_over_its_limit_is_refused_naming_the_switch(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["scores"] = {"kd_source": "cache", "max_dense_gib": 1e-6, "top_k": 8}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "| teacher score train |" in out and "scores.max_dense_gib" in out and "scores.kd_source: online" in out
    cfg["scores"]["kd_source"] = "auto"  # auto falls back to the online teacher, which fits
    config.write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| teacher tokens train |" in out and "online" in out and "REFUSED" not in out
