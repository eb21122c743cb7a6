"""An ensemble teacher scores like its formula, through every scorer that reads one teacher."""
import numpy as np
import pytest
import torch

from core.config import BenchConfig
from eval.ensemble import Ensemble
from eval.evaluate import teacher_metrics
from eval.scaling import teacher_points, token_shape
from teacher.ensemble import EnsembleSide, EnsembleTeacher, Standardised, combine
from teacher.online import OnlineTeacher
from teacher.scoring import candidate_scorer, encode_gallery, encode_split, score_all
from teacher.tokens import TokenStore
from tests.conftest import build_tiny

CPU = torch.device("cpu")
TERMS = [Standardised(0.3, 0.1, 0.5), Standardised(0.7, -0.2, 2.0)]


@pytest.fixture(scope="module")
def ensemble(text_model_dir, splits):
    """Two different tiny teachers and their encoded val split, as one ensemble."""
    members = [build_tiny("teacher", text_model_dir), build_tiny("teacher", text_model_dir, projection="mlp")]
    encoded = [encode_split(m, splits["val"], m.image_tower.preprocess(), 16, CPU, progress=False) for m in members]
    with torch.no_grad():
        member_scores = [m.score(*e).numpy() for m, e in zip(members, encoded, strict=True)]
    images, captions = EnsembleSide([e[0] for e in encoded]), EnsembleSide([e[1] for e in encoded])
    return EnsembleTeacher(members, TERMS, "pair"), images, captions, member_scores


def test_the_score_is_the_weighted_sum_of_standardised_member_scores(ensemble):
    teacher, images, captions, member_scores = ensemble
    expected = sum(t.weight * (s - t.mean) / t.std for s, t in zip(member_scores, TERMS, strict=True))
    assert not np.allclose(member_scores[0], member_scores[1], atol=1e-3)
    with torch.no_grad():
        np.testing.assert_allclose(teacher.score(images, captions).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(combine(member_scores, TERMS), expected, atol=1e-6)
    as_fitted = Ensemble([t.weight for t in TERMS], [t.mean for t in TERMS], [t.std for t in TERMS], 0.0)
    np.testing.assert_allclose(as_fitted.combine(member_scores), expected, atol=1e-5)


def test_blocks_candidates_and_online_lookups_read_the_same_scores(ensemble, splits):
    teacher, images, captions, _ = ensemble
    with torch.no_grad():
        whole = teacher.score(images, captions).numpy()
    one_row_blocks = images.bytes_per_row() * 2 / 2**30  # one image and a few captions per block
    np.testing.assert_allclose(score_all(teacher, images, captions, one_row_blocks, progress=False), whole, atol=1e-5)
    scorer = candidate_scorer(teacher, images, captions, max_elements=1)  # one query per group
    rng = np.random.default_rng(0)
    caption_ids, image_ids = rng.choice(80, 6, replace=False), rng.choice(16, 4, replace=False)
    picked_images, picked_captions = rng.integers(0, 16, (6, 5)), rng.integers(0, 80, (4, 7))
    np.testing.assert_allclose(scorer("t2i", caption_ids, picked_images), whole[picked_images, caption_ids[:, None]],
                               atol=1e-5)
    np.testing.assert_allclose(scorer("i2t", image_ids, picked_captions), whole[image_ids[:, None], picked_captions],
                               atol=1e-5)
    online = OnlineTeacher(teacher, TokenStore(images, captions))
    block = online(torch.as_tensor(image_ids), torch.as_tensor(caption_ids)).numpy()
    np.testing.assert_allclose(block, whole[np.ix_(image_ids, caption_ids)], atol=1e-5)
    metrics, scored = teacher_metrics(teacher, images, captions, splits["val"], progress=False)
    assert scored == "every pair" and metrics["rsum"] > 0


def test_each_member_needs_its_weight():
    with pytest.raises(ValueError, match="one weight per member"):
        EnsembleTeacher([torch.nn.Linear(1, 1)], TERMS, "pair")


def test_a_query_is_encoded_and_scored_by_every_member(ensemble, splits):
    """What `bench` times for an ensemble: each member's gallery (its own image tower and preprocessing)
    and each member's caption encoding, giving the scores evaluation reads."""
    teacher, images, captions, _ = ensemble
    split = splits["val"]
    gallery = encode_gallery(teacher, split, 16, CPU)
    assert len(gallery.members) == 2
    for got, want in zip(gallery.members, images.members, strict=True):
        torch.testing.assert_close(got.tokens, want.tokens)
    with torch.no_grad():
        query = teacher.score(gallery, teacher.encode_captions([split.captions[3]]))[:, 0]
        torch.testing.assert_close(query, teacher.score(images, captions)[:, 3], atol=1e-5, rtol=1e-5)


def test_the_scaling_counts_every_members_tokens(ensemble):
    teacher, images, _, _ = ensemble
    shape = token_shape(images)
    regions = [m.tokens.shape[1] for m in images.members]
    assert shape["regions"] == sum(regions) and shape["dim"] == images.members[0].tokens.shape[2]
    rows = teacher_points(teacher, images, ["a dog runs", "two people"],
                          BenchConfig(warmup=0, repeats=1, gallery_sizes=[4, 12], scaling_budget_s=0.01), CPU)
    per_image = sum(m.held_bytes_per_row() for m in images.members)
    assert [(r["gallery"], r["gallery_bytes"], r["measured"]) for r in rows] == [(4, 4 * per_image, True),
                                                                                (12, 12 * per_image, True)]
