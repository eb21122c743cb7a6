"""The teacher's token store, and every scorer that reads it: blocked all-pairs scoring, candidates, online KD."""
import numpy as np
import pytest
import torch

from teacher.cache import ScoreCacheMismatch
from teacher.online import OnlineTeacher, dense_lookup
from teacher.scoring import candidate_scorer, encode_split, score_all
from teacher.tokens import build_token_store, open_token_store, token_identity


def _store(teacher, split, directory, dtype="float32"):
    identity = token_identity("t" * 64, split.fingerprint(), split.name, split.n_images, split.n_captions, dtype)
    build_token_store(teacher, split, directory, identity, teacher.image_tower.preprocess(), 7, torch.device("cpu"),
                      progress=False)
    return open_token_store(directory, identity), identity


def test_scores_from_the_store_equal_scores_from_memory(tiny_teacher, splits, tmp_path):
    split = splits["val"]
    store, _ = _store(tiny_teacher, split, tmp_path / "f32")
    images, captions = encode_split(tiny_teacher, split, tiny_teacher.image_tower.preprocess(), 5, torch.device("cpu"),
                                    False)
    in_memory = score_all(tiny_teacher, images, captions, progress=False)
    from_store = score_all(tiny_teacher, store.images, store.captions, progress=False)
    np.testing.assert_allclose(from_store, in_memory, atol=1e-5)
    half, _ = _store(tiny_teacher, split, tmp_path / "f16", "float16")
    assert half.captions.tokens.dtype == np.float16
    np.testing.assert_allclose(score_all(tiny_teacher, half.images, half.captions, progress=False), in_memory, atol=5e-3)


def test_blocked_scoring_equals_unblocked_and_writes_into_a_given_array(tiny_teacher, splits, tmp_path):
    store, _ = _store(tiny_teacher, splits["val"], tmp_path / "s")
    whole = score_all(tiny_teacher, store.images, store.captions, block_gib=1.0, progress=False)
    row = store.images.bytes_per_row()
    out = np.lib.format.open_memmap(tmp_path / "scores.npy", "w+", np.float32, whole.shape)
    blocked = score_all(tiny_teacher, store.images, store.captions, block_gib=4 * row / 2**30, progress=False, out=out)
    assert blocked is out
    np.testing.assert_allclose(np.asarray(out), whole, atol=1e-6)


def test_online_scores_equal_the_cache_for_the_same_pairs(tiny_teacher, splits, tmp_path):
    store, _ = _store(tiny_teacher, splits["train"], tmp_path / "s", "float16")
    cache = dense_lookup(score_all(tiny_teacher, store.images, store.captions, progress=False))
    online = OnlineTeacher(tiny_teacher, store)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.choice(splits["train"].n_images, 12, replace=False))
    captions = torch.from_numpy(rng.choice(splits["train"].n_captions, 16, replace=False))
    torch.testing.assert_close(online(images, captions), cache(images, captions), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in tiny_teacher.parameters())  # the online teacher is frozen


def test_candidate_scores_from_the_store_equal_all_pairs(tiny_teacher, splits, tmp_path):
    store, _ = _store(tiny_teacher, splits["val"], tmp_path / "s")
    dense = score_all(tiny_teacher, store.images, store.captions, progress=False)
    candidates = np.argsort(-dense, axis=0)[:4].T  # each caption's 4 best images
    scores = candidate_scorer(tiny_teacher, store.images, store.captions)("t2i", np.arange(dense.shape[1]), candidates)
    np.testing.assert_allclose(scores, dense[candidates, np.arange(dense.shape[1])[:, None]], atol=1e-5)


def test_a_store_made_for_another_teacher_is_refused(tiny_teacher, splits, tmp_path):
    _, identity = _store(tiny_teacher, splits["val"], tmp_path / "s")
    with pytest.raises(ScoreCacheMismatch, match="teacher_checkpoint_sha256"):
        open_token_store(tmp_path / "s", {**identity, "teacher_checkpoint_sha256": "x" * 64})
    assert not (tmp_path / "s.partial").exists()
