import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.metrics import KEYS, ranks, retrieval_metrics


def perfect(n_img: int, k: int = 5) -> np.ndarray:
    sims = np.zeros((n_img, n_img * k))
    for i in range(n_img):
        sims[i, i * k:(i + 1) * k] = 1.0
    return sims


def test_perfect_retrieval():
    m = retrieval_metrics(perfect(4))
    assert set(m) == set(KEYS)
    for d in ("i2t", "t2i"):
        assert m[f"{d}_r1"] == m[f"{d}_r5"] == m[f"{d}_r10"] == 100.0
        assert m[f"{d}_medr"] == 1.0 and m[f"{d}_meanr"] == 1.0
    assert m["rsum"] == 600.0


def test_hand_worked_ranks():
    # 2 images, 2 captions each (k=2). Caption j belongs to image j // 2.
    sims = np.array([
        [0.1, 0.9, 0.5, 0.2],   # image 0: best own caption (0.9) ranks 0
        [0.8, 0.7, 0.3, 0.6],   # image 1: own captions 0.3, 0.6; best 0.6 beaten by 0.8, 0.7 -> rank 2
    ])
    i2t, t2i = ranks(sims, captions_per_image=2)
    assert i2t.tolist() == [0, 2]
    # captions: c0 (img0: .1 vs .8 -> rank 1), c1 (.9 vs .7 -> 0), c2 (img1: .3 vs .5 -> 1), c3 (.6 vs .2 -> 0)
    assert t2i.tolist() == [1, 0, 1, 0]
    m = retrieval_metrics(sims, captions_per_image=2)
    assert m["i2t_r1"] == 50.0 and m["i2t_r5"] == 100.0
    assert m["t2i_r1"] == 50.0
    assert m["i2t_medr"] == 2.0  # floor(median([0, 2]) = 1) + 1
    assert m["i2t_meanr"] == 2.0  # mean rank 1 + 1
    assert m["t2i_medr"] == 1.0  # floor(median([1,0,1,0]) = 0.5) + 1
    assert m["t2i_meanr"] == 1.5
    assert m["rsum"] == pytest.approx(50 + 100 + 100 + 50 + 100 + 100)


def test_ties_favour_the_ground_truth():
    sims = np.ones((3, 15))
    m = retrieval_metrics(sims)
    assert m["i2t_r1"] == 100.0 and m["t2i_r1"] == 100.0


def test_i2t_uses_best_caption():
    sims = perfect(3) * 0.0
    sims[0, 4] = 1.0  # only the last of image 0's captions scores high
    i2t, _ = ranks(sims)
    assert i2t[0] == 0


def test_folds_average_blocks():
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(10, 50))
    folded = retrieval_metrics(sims, folds=5)
    blocks = [retrieval_metrics(sims[f * 2:(f + 1) * 2, f * 10:(f + 1) * 10]) for f in range(5)]
    for key in KEYS:
        assert folded[key] == pytest.approx(np.mean([b[key] for b in blocks]))


@pytest.mark.parametrize("sims,kwargs,message", [
    (np.zeros((2, 9)), {}, "expected 10 captions"),
    (np.full((2, 10), np.nan), {}, "NaN"),
    (np.zeros((3, 15)), {"folds": 2}, "equal folds"),
])
def test_rejects_bad_input(sims, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sims, **kwargs)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 10_000))
def test_invariant_under_monotonic_transform(n_img, k, seed):
    sims = np.random.default_rng(seed).normal(size=(n_img, n_img * k))
    assert retrieval_metrics(sims, k) == retrieval_metrics(np.exp(3 * sims) + 1, k)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000))
def test_ranks_match_brute_force(n_img, seed):
    k = 2
    sims = np.round(np.random.default_rng(seed).normal(size=(n_img, n_img * k)), 1)  # ties happen
    i2t, t2i = ranks(sims, k)
    for i in range(n_img):
        assert i2t[i] == min(int((sims[i] > sims[i, j]).sum()) for j in range(i * k, (i + 1) * k))
    for j in range(n_img * k):
        assert t2i[j] == int((sims[:, j] > sims[j // k, j]).sum())


@st.composite
def sims_matrix(draw) -> tuple[np.ndarray, int]:
    """Scores of n images against their k captions each, ties included (rounded)."""
    n_img, k, seed = draw(st.integers(1, 12)), draw(st.integers(1, 5)), draw(st.integers(0, 10_000))
    return np.round(np.random.default_rng(seed).normal(size=(n_img, n_img * k)), 1), k


@settings(max_examples=60, deadline=None)
@given(sims_matrix(), st.integers(0, 10_000))
def test_permuting_images_with_their_captions_changes_nothing(sk, seed):
    sims, k = sk
    rng = np.random.default_rng(seed)
    order = rng.permutation(sims.shape[0])  # images, each taking its block of captions along
    within = rng.permuted(np.tile(np.arange(k), (len(order), 1)), axis=1)  # captions shuffled inside each block
    columns = (order[:, None] * k + within).ravel()
    assert retrieval_metrics(sims[order][:, columns], k) == retrieval_metrics(sims, k)


@settings(max_examples=60, deadline=None)
@given(sims_matrix(), st.floats(-1e3, 1e3))
def test_metrics_are_bounded_ordered_and_shift_invariant(sk, shift):
    sims, k = sk
    m = retrieval_metrics(sims, k)
    n_img = sims.shape[0]
    for d, n_candidates in (("i2t", n_img * k), ("t2i", n_img)):
        assert 0 <= m[f"{d}_r1"] <= m[f"{d}_r5"] <= m[f"{d}_r10"] <= 100
        assert 1 <= m[f"{d}_medr"] <= n_candidates and 1 <= m[f"{d}_meanr"] <= n_candidates
    assert m["rsum"] == pytest.approx(sum(m[f"{d}_r{r}"] for d in ("i2t", "t2i") for r in (1, 5, 10)))
    assert retrieval_metrics(np.round(sims * 10) + np.round(shift), k) == m  # integer scores: the shift is exact


@settings(max_examples=60, deadline=None)
@given(sims_matrix())
def test_strictly_best_matches_score_100(sk):
    sims, k = sk
    n_img = sims.shape[0]
    lifted = sims + 100 * (np.arange(n_img)[:, None] == np.arange(n_img * k)[None, :] // k)
    m = retrieval_metrics(lifted, k)
    assert all(m[f"{d}_r{r}"] == 100.0 for d in ("i2t", "t2i") for r in (1, 5, 10))
    assert m["i2t_medr"] == m["t2i_medr"] == m["i2t_meanr"] == m["t2i_meanr"] == 1.0
