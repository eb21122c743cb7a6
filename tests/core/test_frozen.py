import numpy as np
import torch

from core.towers.frozen import frozen_for, frozen_image_outputs, frozen_text_outputs, weights_fingerprint
from student.encode import encode_split
from tests.conftest import TINY_TOWERS, build_tiny

CPU = torch.device("cpu")


def frozen_student(text_model_dir):
    return build_tiny("student", text_model_dir, image_tower={**TINY_TOWERS["image_tower"], "freeze": True},
                      text_tower={**TINY_TOWERS["text_tower"], "freeze": True})


def test_cached_outputs_equal_the_tower(text_model_dir, splits, tmp_path):
    model = frozen_student(text_model_dir)
    split = splits["val"]
    frozen = frozen_for(model, split, tmp_path, 5, CPU)
    assert frozen[0] is not None and frozen[1] is not None
    direct = encode_split(model, split, model.image_tower.preprocess(), 5, CPU, False)
    cached = encode_split(model, split, model.image_tower.preprocess(), 5, CPU, False, frozen)
    for a, b in zip(direct, cached):
        np.testing.assert_allclose(a, b, atol=2e-3)  # float16 storage
    idx = torch.tensor([3, 0])
    out = frozen[1].take(idx)
    assert out.mask[:, -1].any()  # trimmed to the longest valid caption of the batch


def test_cache_is_reused_and_keyed_by_weights(text_model_dir, splits, tmp_path):
    model = frozen_student(text_model_dir)
    split = splits["test"]
    frozen_text_outputs(model.text_tower, split, tmp_path, 8, CPU)
    entries = set(tmp_path.iterdir())
    mtimes = {p: (p / "tokens.npy").stat().st_mtime_ns for p in entries}
    frozen_text_outputs(model.text_tower, split, tmp_path, 8, CPU)
    assert set(tmp_path.iterdir()) == entries and all((p / "tokens.npy").stat().st_mtime_ns == t for p, t in mtimes.items())
    before = weights_fingerprint(model.image_tower)
    frozen_image_outputs(model.image_tower, split, model.image_tower.preprocess(), tmp_path, 8, CPU)
    entries = set(tmp_path.iterdir())
    image_dir = next(p for p in entries if "image" in (p / "manifest.json").read_text())
    stamp = (image_dir / "tokens.npy").stat().st_mtime_ns
    frozen_image_outputs(model.image_tower, split, model.image_tower.preprocess(), tmp_path, 8, CPU)
    assert (image_dir / "tokens.npy").stat().st_mtime_ns == stamp  # reused, not recomputed
    with torch.no_grad():
        next(model.image_tower.parameters()).add_(1.0)
    assert weights_fingerprint(model.image_tower) != before
    frozen_image_outputs(model.image_tower, split, model.image_tower.preprocess(), tmp_path, 8, CPU)
    assert len(set(tmp_path.iterdir())) == len(entries) + 1  # a changed tower gets its own cache


def test_trainable_towers_are_not_cached(tiny_student, splits, tmp_path):
    assert frozen_for(tiny_student, splits["val"], tmp_path, 8, CPU) == (None, None)
