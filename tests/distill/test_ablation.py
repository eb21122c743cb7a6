import json

import yaml

from core.run_layout import RunPaths
from distill.cli import main
from tests.conftest import assert_layout_names, tiny_config_dict


def test_ablate_trains_each_variant_per_seed_and_reports_the_table(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["student"]["momentum"] = {"queue_size": 16, "token_queue_size": 32, "queue_terms": ["kd", "align"]}
    cfg["student"]["losses"]["concept"] = {"weight": 0.0}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["ablate", str(tmp_path / "tiny.yaml"), "--variants", "baseline", "cached-kd", "queue", "selfalign",
                 "distilled"]) == 0
    table = json.loads((tmp_path / "run/ablation/ablation.json").read_text())
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == ["baseline", "cached-kd", "queue", "selfalign", "distilled"]
    assert rows["baseline"]["terms"] == ["contrastive"] and rows["cached-kd"]["terms"] == ["contrastive", "cached_kd"]
    assert rows["selfalign"]["terms"] == ["contrastive", "align"]
    assert rows["queue"]["terms"] == ["contrastive", "queue 16 (read by contrastive)"]  # the row's one reader
    assert rows["distilled"]["terms"] == ["contrastive", "kd", "cached_kd", "align", "queue 16 (read by kd, align)"]
    assert all(len(r["per_seed"]) == 2 for r in rows.values())  # seeds 0 and 1
    for variant in rows:
        assert (tmp_path / "run/students" / f"{variant}-seed1" / "model.safetensors").is_file()
    markdown = (tmp_path / "run/ablation/ablation.md").read_text()
    assert "| + cached top-K KD | contrastive, cached_kd |" in markdown and "Reproduce: `itr-distill ablate" in markdown
    assert (tmp_path / "run/ablation/curves.png").is_file()  # every variant's and seed's training
    assert_layout_names(tmp_path / "run")


def test_a_variant_whose_component_is_off_is_skipped_and_named(tmp_path):
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["experiment"] = {"seeds": [0]}
    cfg["student"]["momentum"] = {"queue_size": 0}  # no queue row
    # comparing student towers needs no teacher: here a frozen tower with a further backbone (stage key,
    # frozen cache, saving and reloading for the evaluation)
    cfg["student"]["image_tower"] = {**cfg["student"]["image_tower"], "freeze": True, "also": [{"name": "test_efficientnet"}]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["ablate", str(tmp_path / "tiny.yaml"), "--variants", "baseline", "queue"]) == 0
    table = json.loads((tmp_path / "run/ablation/ablation.json").read_text())
    assert [r["variant"] for r in table["rows"]] == ["baseline"] and table["skipped"] == ["queue"]
    paths = RunPaths(tmp_path / "run")
    assert not paths.teacher.exists() and not paths.scores("train").exists()  # contrastive rows read no teacher
    assert json.loads((paths.students / "baseline-seed0" / "model.json").read_text())["config"]["image_tower"]["also"]
