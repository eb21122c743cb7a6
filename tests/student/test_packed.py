"""A pack of students is one dual encoder whose score is the weighted sum of its members' scores,
running the trunk they share once."""
import numpy as np
import pytest
import torch

from core.data.loading import image_loader
from core.towers.frozen import frozen_for
from student.encode import encode_split
from student.packed import PackedStudent
from tests.conftest import TINY_TOWERS, build_tiny

CUT = {"image_tower": {**TINY_TOWERS["image_tower"], "freeze": True, "train_top": 1},
       "text_tower": {**TINY_TOWERS["text_tower"], "freeze": True, "train_top": 1},
       "image_pooling": "gpo", "text_pooling": "gpo"}


def _member(text_model_dir, seed: int, **overrides):
    """A tiny student over the seed-0 trunk whose tops and heads are moved by `seed` (as training
    another seed over one frozen trunk would)."""
    student = build_tiny("student", text_model_dir, **{**CUT, **overrides})
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in student.parameters():
                if p.requires_grad:
                    p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return student


def _encode(model, split):
    batch = next(iter(image_loader(split, model.image_tower.preprocess(), split.n_images)))
    tokens = model.tokenize(list(split.captions))
    with torch.no_grad():
        return model.encode_images(batch.images), model.encode_text(tokens["input_ids"], tokens["attention_mask"])


def test_pack_scores_are_the_members_weighted_scores(text_model_dir, splits):
    a, b = _member(text_model_dir, 0), _member(text_model_dir, 1)
    pack = PackedStudent([a, b], [0.3, 0.7], ["a", "b"]).eval()
    split = splits["test"]
    (ia, ta), (ib, tb) = _encode(a, split), _encode(b, split)
    images, texts = _encode(pack, split)
    assert images.shape[1] == texts.shape[1] == a.embedding_dim + b.embedding_dim == pack.embedding_dim
    expected = 0.3 * (ia @ ta.T) + 0.7 * (ib @ tb.T)
    torch.testing.assert_close(images @ texts.T, expected, atol=1e-5, rtol=0)
    for packed in (images, texts):  # a unit-norm embedding, as every student's
        torch.testing.assert_close(packed.norm(dim=-1), torch.ones(len(packed)))
    scaled = PackedStudent([a, b], [3.0, 7.0], ["a", "b"]).eval()  # weights count by their ratio
    torch.testing.assert_close(_encode(scaled, split)[0], images)
    assert not torch.allclose(ia @ ta.T, ib @ tb.T, atol=1e-3)  # the members do differ


def test_pack_over_cached_trunks_matches_its_graphs(tmp_path, text_model_dir, splits):
    """Encoding a split over the members' cached trunks (length-grouped text tops) gives what the
    exported forward gives (one padded pass), within the float16 cache's precision."""
    pack = PackedStudent([_member(text_model_dir, 0), _member(text_model_dir, 1)], [0.5, 0.5], ["a", "b"]).eval()
    split, device = splits["test"], torch.device("cpu")
    frozen = frozen_for(pack, split, tmp_path, 8, device)
    assert frozen[0] is not None and frozen[1] is not None
    images, texts = encode_split(pack, split, pack.image_tower.preprocess(), 8, device, False, frozen)
    ref_images, ref_texts = _encode(pack, split)
    np.testing.assert_allclose(images, ref_images.numpy(), atol=5e-3)
    np.testing.assert_allclose(texts, ref_texts.numpy(), atol=5e-3)


def test_the_shared_trunk_runs_once_per_input(text_model_dir, splits):
    a, b = _member(text_model_dir, 0), _member(text_model_dir, 1)
    pack = PackedStudent([a, b], [0.5, 0.5], ["a", "b"]).eval()
    calls = {"a": 0, "b": 0}
    for name, member in (("a", a), ("b", b)):
        for tower in (member.image_tower, member.text_tower):
            tower.trunk_modules()[0].register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    _encode(pack, splits["test"])
    assert calls == {"a": 2, "b": 0}  # one image and one text trunk pass, member b's trunk never runs


def test_members_that_do_not_share_a_trunk_are_refused(text_model_dir):
    a = _member(text_model_dir, 0)
    other = _member(text_model_dir, 0)
    with torch.no_grad():
        for m in other.image_tower.trunk_modules():
            for p in m.parameters():
                p.add_(0.1)
    with pytest.raises(ValueError, match="other: its image tower trunk differs from a's"):
        PackedStudent([a, other], [0.5, 0.5], ["a", "other"])
    cut_elsewhere = _member(text_model_dir, 0, text_tower={**CUT["text_tower"], "train_top": 0})
    with pytest.raises(ValueError, match="deeper: its text tower trunk differs"):
        PackedStudent([a, cut_elsewhere], [0.5, 0.5], ["a", "deeper"])


def test_members_that_train_their_whole_tower_are_refused(text_model_dir):
    trained = build_tiny("student", text_model_dir)  # towers not frozen: nothing is shared
    with pytest.raises(ValueError, match="s0: its image tower trains below any cut"):
        PackedStudent([trained, trained], [0.5, 0.5], ["s0", "s1"])


def test_a_pack_needs_two_members_and_positive_weights(text_model_dir):
    a = _member(text_model_dir, 0)
    with pytest.raises(ValueError, match="two or more members"):
        PackedStudent([a], [1.0], ["a"])
    with pytest.raises(ValueError, match="must be positive"):
        PackedStudent([a, _member(text_model_dir, 1)], [1.0, 0.0], ["a", "b"])
