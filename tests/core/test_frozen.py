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
    for a, b in zip(direct, cached, strict=True):
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


def cut_model(kind, text_model_dir):
    return build_tiny(kind, text_model_dir, image_tower={**TINY_TOWERS["image_tower"], "freeze": True, "train_top": 1},
                      text_tower={**TINY_TOWERS["text_tower"], "freeze": True, "train_top": 1})


def test_cut_towers_cache_their_trunk_and_run_their_top(text_model_dir, splits, tmp_path):
    model = cut_model("student", text_model_dir)
    split = splits["val"]
    frozen = frozen_for(model, split, tmp_path, 5, CPU)
    assert frozen[0].tokens.shape[1:] == (4, 16)  # the third stage's 2x2 grid, 16 channels (the last has 32)
    with torch.no_grad():  # a trained top: the cached trunk outputs still serve it
        for tower in (model.image_tower, model.text_tower):
            for p in (p for m in tower.top_modules() for p in m.parameters()):
                p.add_(0.01 * torch.randn_like(p))
    assert frozen_for(model, split, tmp_path, 5, CPU)[0].tokens.filename == frozen[0].tokens.filename
    direct = encode_split(model, split, model.image_tower.preprocess(), 5, CPU, False)
    cached = encode_split(model, split, model.image_tower.preprocess(), 5, CPU, False, frozen)
    for a, b in zip(direct, cached, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)  # float16 storage
    whole = frozen_for(frozen_student(text_model_dir), split, tmp_path, 5, CPU)
    assert whole[0].tokens.filename != frozen[0].tokens.filename  # the cut point is part of the key
    assert whole[1].tokens.filename != frozen[1].tokens.filename


def test_teacher_trains_its_top_from_the_cache(text_model_dir, splits, tmp_path):
    from core.data.loading import Batch

    teacher = cut_model("teacher", text_model_dir).train()
    frozen = frozen_for(teacher, splits["train"], tmp_path, 8, CPU)
    index = torch.arange(4)
    batch = Batch(image_index=index, caption_index=index * 5, image_features=frozen[0].take(index),
                  text_features=frozen[1].take(index * 5))
    teacher(batch)["sims"].sum().backward()
    for tower in (teacher.image_tower, teacher.text_tower):
        assert all(p.grad is not None for m in tower.top_modules() for p in m.parameters())
        assert all(p.grad is None for m in tower.trunk_modules() for p in m.parameters())
