"""A teacher ensemble's score: the weighted sum of its members' standardised scores.

Members score on different scales (SCAN's LogSumExp relevance plus a cosine, a cross-encoder's
logit), so each member's scores are standardised with the mean and spread of its scores on the
selection split; the weights are the point of a simplex grid with the best selection rsum. The same
statistics and weights then apply to any other split, so nothing is tuned on the split reported.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from eval.metrics import retrieval_metrics
from teacher.ensemble import Standardised, combine


@dataclass
class Ensemble:
    weights: list[float]
    means: list[float]
    stds: list[float]
    selection_rsum: float

    @property
    def terms(self) -> list[Standardised]:
        return [Standardised(w, m, s) for w, m, s in zip(self.weights, self.means, self.stds, strict=True)]

    def combine(self, member_sims: list[np.ndarray]) -> np.ndarray:
        """(n_img, n_cap) ensemble scores from each member's scores of the same pairs."""
        return combine([np.asarray(s, dtype=np.float32) for s in member_sims], self.terms)


def simplex(members: int, step: float) -> list[tuple[float, ...]]:
    """Weights >= 0 summing to one on a grid of `step` (0.1: 11 points for two members, 66 for three)."""
    if not 0 < step <= 1 or abs(1 / step - round(1 / step)) > 1e-9:
        raise ValueError(f"the weight grid's step must divide 1, got {step}")
    n = round(1 / step)
    return [tuple(c / n for c in combo) for combo in itertools.product(range(n + 1), repeat=members) if sum(combo) == n]


def fit_ensemble(selection_sims: list[np.ndarray], captions_per_image: int, folds: int = 1,
                 step: float = 0.1, every_member: bool = False) -> Ensemble:
    """Standardisation and weights chosen on the selection split's member scores (`every_member`: each
    keeps at least one grid step of weight)."""
    means = [float(s.mean()) for s in selection_sims]
    stds = [float(s.std()) or 1.0 for s in selection_sims]
    best: Ensemble | None = None
    for weights in simplex(len(selection_sims), step):
        if every_member and min(weights) == 0:
            continue
        candidate = Ensemble(list(weights), means, stds, float("nan"))
        rsum = retrieval_metrics(candidate.combine(selection_sims), captions_per_image, folds)["rsum"]
        if best is None or rsum > best.selection_rsum:
            best = Ensemble(list(weights), means, stds, rsum)
    return best
