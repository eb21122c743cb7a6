"""`itr-distill pack` and `experiment.pack`: the distilled students of several seeds become one exported
dual encoder, weighted on the selection split; a member retrained since packing is refused."""
import json

import numpy as np
import pytest
import torch
import yaml

from core.checkpoint import save_tensors
from core.config import load_config
from core.run_layout import RunPaths
from core.towers.frozen import NOT_FROZEN, frozen_for
from distill.cli import main
from distill.models import load_model
from distill.stages import load_split
from eval.evaluate import student_sims
from eval.metrics import retrieval_metrics
from tests.conftest import assert_layout_names, build_tiny, tiny_config_dict
from tests.student.test_packed import CUT


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory, text_model_dir):
    """Students over frozen trunks that load from files (as pretrained ones do), so every seed has the same
    trunk: a tiny image backbone's weights, and a text model directory."""
    root = tmp_path_factory.mktemp("pack")
    backbone = root / "backbone.safetensors"
    save_tensors(build_tiny("student", text_model_dir, **CUT).image_tower.model.state_dict(), backbone)
    cfg = tiny_config_dict(root / "run", root / "data")
    cfg["student"] = {**cfg["student"], **CUT, "image_tower": {**CUT["image_tower"], "weights": str(backbone)},
                      "text_tower": {**CUT["text_tower"], "model": str(text_model_dir)}}
    cfg["experiment"] = {"seeds": [0, 1], "pack": True}
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(config)]) == 0
    return config, root / "run"


def test_run_packs_the_seeds_and_exports_the_pack(packed_run):
    config, run = packed_run
    paths = RunPaths(run)
    info = json.loads((paths.pack("distilled") / "model.json").read_text())
    assert info["kind"] == "packed" and [m["directory"] for m in info["members"]] == ["distilled-seed0", "distilled-seed1"]
    assert sum(m["grid_weight"] for m in info["members"]) == pytest.approx(1.0)
    assert sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)  # the shares of the packed score
    manifest = json.loads((paths.export / "manifest.json").read_text())
    assert manifest["source_checkpoint"]["path"].endswith("distilled-pack/model.safetensors")
    assert manifest["parity"]["passed"]
    results = json.loads(paths.eval_results.read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert {"distilled-seed0", "distilled-seed1", "distilled-pack", "onnx-fp32"} <= set(systems)
    assert "seeds packed into one dual encoder" in paths.report.read_text()
    stages = [s["stage"] for s in json.loads((run / "stages.json").read_text())["stages"]]
    assert stages.index("distill distilled seed 1") < stages.index("pack") < stages.index("export")
    assert_layout_names(run)


def test_the_pack_ranks_by_the_members_weighted_scores(packed_run):
    """Its figures are those of the members' scores summed with the chosen weights (the kept members'
    share is grid weight / selection std); the pack is not retrained or tuned on the test split."""
    config, run = packed_run
    cfg, paths, device = load_config(config), RunPaths(run), torch.device("cpu")
    split = load_split(cfg, "test")
    info = json.loads((paths.pack("distilled") / "model.json").read_text())
    def sims(model, cached: bool = False) -> np.ndarray:
        frozen = frozen_for(model, split, paths.features, 8, device, build=False) if cached else NOT_FROZEN
        return student_sims(model, split, model.image_tower.preprocess(), 8, device, progress=False, frozen=frozen)

    pack = load_model(paths.pack("distilled"))
    expected = sum(m["weight"] * sims(load_model(run / "students" / m["directory"])) for m in info["members"])
    np.testing.assert_allclose(sims(pack), expected, atol=1e-5)
    reported = next(s for s in json.loads(paths.eval_results.read_text())["systems"] if s["name"] == "distilled-pack")
    # eval read the trunk caches its members wrote: the pack shares their cache keys
    assert reported["metrics"]["rsum"] == retrieval_metrics(sims(pack, cached=True), split.captions_per_image)["rsum"]


def test_a_member_retrained_since_packing_is_refused(packed_run):
    _, run = packed_run
    weights = run / "students" / "distilled-seed1" / "model.safetensors"
    kept = weights.read_bytes()
    state = {k: v + 1 if v.is_floating_point() else v for k, v in load_model(weights.parent).state_dict().items()}
    try:
        save_tensors(state, weights)
        with pytest.raises(ValueError, match="its member distilled-seed1 changed since it was packed"):
            load_model(run / "students" / "distilled-pack")
    finally:
        weights.write_bytes(kept)


def test_pack_needs_two_trained_seeds(packed_run, capsys):
    config, run = packed_run
    assert main(["pack", str(config), "--seeds", "0"]) != 0
    assert "a pack needs two or more seeds" in capsys.readouterr().err
    assert main(["pack", str(config), "--seeds", "0", "7"]) != 0
    assert "distilled-seed7/model.safetensors" in capsys.readouterr().err
