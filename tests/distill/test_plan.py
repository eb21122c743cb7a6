"""The plan: shapes from headers only, the KD source, what it refuses and why."""
import json

import numpy as np
import pytest

from core.config import load_config
from distill.plan import GIB, SplitShape, kd_source, make_plan, split_shapes
from distill.rehearsal import COCO, COCO_TEST, COCO_VAL, rehearsal_config


def _features(root, name, images, regions=4, dim=8, lines_per_image=5):
    np.save(root / f"{name}_ims.npy", np.zeros((images, regions, dim), dtype=np.float32))
    (root / f"{name}_caps.txt").write_text("".join(f"caption {i}\n" for i in range(images * lines_per_image)))


def test_shapes_come_from_headers_with_several_files_and_limits(tmp_path):
    for name, n in (("train", 6), ("restval", 4), ("dev", 3), ("test", 2)):
        _features(tmp_path, name, n)
    np.save(tmp_path / "test_ims.npy", np.zeros((10, 4, 8), dtype=np.float32))  # one row per caption (some releases)
    cfg = load_config(None, ["data.format=precomputed", f"data.path={tmp_path}", "data.splits.val=[dev]",
                             "data.limit_val=2"])
    shapes = split_shapes(cfg)
    assert shapes == {"train": SplitShape(10, 50), "val": SplitShape(2, 10), "test": SplitShape(2, 10)}


def test_karpathy_shapes_count_the_json_entries(tmp_path):
    images = [{"filename": f"{i}.jpg", "split": s, "sentences": []} for i, s in enumerate(["train"] * 3 + ["restval", "val"])]
    (tmp_path / "d.json").write_text(json.dumps({"images": images}))
    cfg = load_config(None, ["data.format=karpathy", f"data.path={tmp_path / 'd.json'}", f"data.image_root={tmp_path}"])
    assert split_shapes(cfg)["train"] == SplitShape(4, 20) and split_shapes(cfg)["test"] == SplitShape(0, 0)


def test_auto_takes_the_cache_only_where_it_fits():
    cfg = load_config(None, ["scores.max_dense_gib=1"])
    fits = int(GIB / 4 / 1000)
    assert kd_source(cfg, 1000, fits) == "cache" and kd_source(cfg, 1000, fits + 1) == "online"
    assert kd_source(load_config(None, ["scores.kd_source=online"]), 10, 10) == "online"


@pytest.fixture()
def features_config(tmp_path):
    for name, n in (("train", 20), ("val", 4), ("test", 4)):
        _features(tmp_path, name, n, regions=36, dim=2048)
    raw = rehearsal_config(tmp_path, tmp_path / "run")
    overrides = [f"{k}={json.dumps(v)}" for k, v in raw.items() if k != "run_dir"] + [f"run_dir={tmp_path / 'run'}"]
    return load_config(None, overrides)


def test_at_coco_size_no_stage_needs_8_gib_and_kd_goes_online(features_config):
    plan = make_plan(features_config, shapes={"train": COCO, "val": COCO_VAL, "test": COCO_TEST})
    assert plan.kd_source == "online" and "teacher tokens train" in [s.name for s in plan.stages]
    assert "teacher score train" not in [s.name for s in plan.stages]
    assert max(s.peak_bytes for s in plan.stages) < 8 * GIB
    distilled = next(s for s in plan.stages if s.name == "distill distilled")
    assert distilled.teacher_pairs < 1e8  # B x B per step, not the 6.4e10 pairs of the all-pairs cache


def test_a_run_writing_more_than_the_disk_limit_is_refused_naming_the_largest_writer(features_config):
    features_config.limits.disk_gib = 1e-3
    plan = make_plan(features_config, shapes={"train": COCO, "val": COCO_VAL, "test": COCO_TEST})
    assert len(plan.problems) == 1 and "limits.disk_gib" in plan.problems[0]
    assert "teacher tokens train" in plan.problems[0] and "REFUSED" in plan.table()


def test_a_cut_tower_caches_its_trunk_and_trains_its_top():
    from distill.plan import model_size

    frozen = ["teacher.image_tower.freeze=true", "teacher.text_tower.freeze=true"]
    whole = model_size(cfg := load_config(None, frozen), cfg.teacher)
    cut = load_config(None, [*frozen, "teacher.image_tower.train_top=1", "teacher.text_tower.train_top=1"])
    size = model_size(cut, cut.teacher)
    assert (whole.cached_image_tokens, whole.cached_image_width) == (whole.image_tokens, whole.image_width)
    assert (size.cached_image_tokens, size.cached_image_width) == (16, 128)  # the third stage's 4x4 grid at 64 px
    assert size.trainable > whole.trainable and size.frozen < whole.frozen
    assert size.trainable + size.frozen == whole.trainable + whole.frozen


def test_a_further_backbone_widens_the_tokens_and_counts_its_parameters():
    from core.towers.image import TimmImageTower
    from distill.plan import model_size

    base = ["teacher.image_tower.freeze=true"]
    whole = model_size(cfg := load_config(None, base), cfg.teacher)
    two = load_config(None, [*base, "teacher.image_tower.also=[{name: test_efficientnet}]"])
    size = model_size(two, two.teacher)
    tower = TimmImageTower(two.teacher.image_tower)
    assert size.image_tokens == whole.image_tokens and size.image_width == tower.out_dim == whole.image_width + 256
    assert size.frozen - whole.frozen == sum(p.numel() for p in tower.also.parameters())


def test_an_ensemble_teacher_counts_every_member_and_its_shared_caches_once(tmp_path):
    from distill.plan import _frozen_disk, model_size

    base = [f"run_dir={tmp_path / 'run'}", "teacher.image_tower.freeze=true", "teacher.text_tower.freeze=true",
            "scores.top_k=8", "experiment.teacher_variants.wide=[teacher.embed_dim=256]"]
    configs = {"configured": load_config(None, base), "wide": load_config(None, [*base, "teacher.embed_dim=256"]),
               "pair": load_config(None, [*base, "experiment.teacher_ensembles.pair=[configured, wide]",
                                          "teacher.ensemble=pair"])}
    names = ["teacher fit", "teacher tokens train", "teacher score train", "teacher score train-topk", "eval"]
    plans = {k: {s.name: s for s in make_plan(c, names).stages} for k, c in configs.items()}
    one, wide, pair = plans["configured"], plans["wide"], plans["pair"]
    val, single = split_shapes(configs["pair"])["val"], configs["configured"]
    shared = _frozen_disk(model_size(single, single.teacher), single.teacher, split_shapes(single))
    assert shared > 0
    fit = pair["teacher fit"]  # both fitted (their frozen caches are the same), then both score val for the weights
    assert fit.teacher_pairs == one["teacher fit"].teacher_pairs + wide["teacher fit"].teacher_pairs + \
        2 * val.images * val.captions
    assert fit.disk_bytes == one["teacher fit"].disk_bytes + wide["teacher fit"].disk_bytes - shared
    assert fit.peak_bytes == max(one["teacher fit"].peak_bytes, wide["teacher fit"].peak_bytes)
    assert fit.writes == ["teacher_ensemble/"]
    for name in ("teacher score train", "teacher score train-topk", "eval"):
        assert pair[name].teacher_pairs == 2 * one[name].teacher_pairs > 0, name
    for name in ("teacher tokens train", "eval"):
        assert pair[name].disk_bytes == one[name].disk_bytes + wide[name].disk_bytes, name
    assert pair["teacher score train"].memory["model"] == \
        one["teacher score train"].memory["model"] + wide["teacher score train"].memory["model"]
    assert not (tmp_path / "run").exists()  # planning makes no member's run directory
