"""A teacher variant's run directory: made with its feature cache linked to the run's, by every rank at once."""
from pathlib import Path

import pytest
import yaml

from core.config import load_config
from core.run_layout import RunPaths
from distill.teacher_runs import variant_run
from tests.conftest import tiny_config_dict


def _config(tmp_path):
    raw = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    raw["experiment"] = {"seeds": [0], "teacher_variants": {"mlp": ["teacher.projection=mlp"]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_a_rank_that_loses_the_race_to_link_the_feature_cache_goes_on(tmp_path, monkeypatch):
    """Under torchrun both ranks make the link; the one that finds it made must not fail (CI saw Errno 17)."""
    cfg = _config(tmp_path)
    make_link = Path.symlink_to

    def other_rank_first(self, target, target_is_directory=False):
        make_link(self, target, target_is_directory)  # the other rank gets there between any check and ours
        make_link(self, target, target_is_directory)

    monkeypatch.setattr(Path, "symlink_to", other_rank_first)
    variant = variant_run(cfg, "mlp", 0)
    features = RunPaths(variant.run_dir).features
    assert features.is_symlink() and features.resolve() == RunPaths(cfg.run_dir).features.resolve()


def test_a_feature_cache_that_is_not_the_runs_is_named_and_left_alone(tmp_path):
    cfg = _config(tmp_path)
    features = RunPaths(variant_run(cfg, "mlp", 0).run_dir).features
    features.unlink()
    features.mkdir()
    (features / "kept.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=f"{features}.*not a link"):
        variant_run(cfg, "mlp", 0)
    assert (features / "kept.npy").read_bytes() == b"x"
