"""The gate's R@1: near-ties that float rounding reorders are misses on both sides, real reorderings count."""
import numpy as np
import pytest

from export.gate import DECIDED_MARGIN, decided_r1


def _sims(lead: float) -> np.ndarray:
    """Two images, one caption each; image 0 and its caption lead the other candidate by `lead` both ways."""
    return np.array([[0.5 + lead, 0.5], [0.5, 0.9]])


def test_a_clear_lead_is_a_hit_and_a_near_tie_is_a_miss():
    assert decided_r1(_sims(1e-2), 1) == {"i2t_r1": 100.0, "t2i_r1": 100.0}
    assert decided_r1(_sims(DECIDED_MARGIN / 10), 1) == {"i2t_r1": 50.0, "t2i_r1": 50.0}


def test_i2t_counts_an_image_found_by_any_of_its_captions():
    sims = np.array([[0.9, 0.1, 0.8, 0.2], [0.95, 0.3, 0.4, 0.5]])  # image 0 found by caption 0 despite caption 1
    assert decided_r1(sims, 2) == {"i2t_r1": 50.0, "t2i_r1": 25.0}


@pytest.mark.parametrize("noise, lost", [(1e-7, 0.0), (1e-2, 50.0)])
def test_rounding_noise_loses_nothing_but_an_error_beyond_the_margin_does(noise, lost):
    reference = _sims(DECIDED_MARGIN / 2)  # PyTorch itself cannot tell image 0's caption apart
    reference[1, 1] = 0.5 + 5e-3  # image 1 leads by 5e-3: decided
    perturbed = reference.copy()
    perturbed[1, 1] -= noise
    drop = decided_r1(reference, 1)["t2i_r1"] - decided_r1(perturbed, 1)["t2i_r1"]
    assert drop == lost
