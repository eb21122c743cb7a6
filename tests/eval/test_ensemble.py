import numpy as np
import pytest

from eval.ensemble import Ensemble, fit_ensemble, simplex
from eval.metrics import retrieval_metrics


def noisy_truth(rng, n_img=20, cpi=5, noise=1.0, scale=1.0, shift=0.0):
    """Scores where each caption's own image scores 1 above the rest, plus noise, on any scale."""
    truth = (np.arange(n_img)[:, None] == np.arange(n_img * cpi)[None, :] // cpi).astype(np.float32)
    return (scale * (truth + noise * rng.standard_normal(truth.shape)) + shift).astype(np.float32)


def test_simplex_points_sum_to_one():
    assert len(simplex(2, 0.1)) == 11 and len(simplex(3, 0.1)) == 66
    assert all(abs(sum(p) - 1) < 1e-9 and min(p) >= 0 for p in simplex(3, 0.25))


def test_weights_favour_the_better_member_whatever_its_scale():
    rng = np.random.default_rng(0)
    good = noisy_truth(rng, noise=0.3, scale=50.0, shift=-7.0)  # far larger scale: standardising matters
    bad = noisy_truth(rng, noise=3.0, scale=0.1)
    chosen = fit_ensemble([bad, good], captions_per_image=5)
    assert chosen.weights[1] > chosen.weights[0]
    assert chosen.selection_rsum >= retrieval_metrics(good)["rsum"]  # the pure member is on the grid
    assert chosen.selection_rsum == retrieval_metrics(chosen.combine([bad, good]))["rsum"]


def test_every_member_keeps_a_weight_when_asked():
    rng = np.random.default_rng(0)
    good, bad = noisy_truth(rng, noise=0.3), noisy_truth(rng, noise=30.0)
    assert fit_ensemble([bad, good], captions_per_image=5).weights == [0.0, 1.0]
    kept = fit_ensemble([bad, good], captions_per_image=5, every_member=True)
    assert kept.weights[0] == pytest.approx(0.1) and kept.weights[1] == pytest.approx(0.9)


def test_combination_is_the_weighted_sum_of_standardised_scores():
    rng = np.random.default_rng(1)
    a, b = noisy_truth(rng), noisy_truth(rng, scale=3.0, shift=2.0)
    ens = Ensemble([0.25, 0.75], [float(a.mean()), float(b.mean())], [float(a.std()), float(b.std())], 0.0)
    expected = 0.25 * (a - a.mean()) / a.std() + 0.75 * (b - b.mean()) / b.std()
    np.testing.assert_allclose(ens.combine([a, b]), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        fit_ensemble([a, b], captions_per_image=5, step=0.0)
