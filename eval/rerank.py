"""Two-stage retrieval: the student retrieves each query's top-K, the teacher re-ranks those K.

The re-ranking score is the teacher's, plus `student_weight` times the student's own similarity of
the pair (0: the teacher alone; the default 1 adds the two, since both are cosine-scale scores and
the stages' errors differ).

Evaluated as its own system. For each direction the re-ranked order is written into a copy of the
student's similarity matrix: a query's K candidates take their teacher scores, shifted above every
other item, which keep the student's order below them. The standard metrics of that matrix are
then exactly the metrics of the two-stage system (a ground truth outside the top-K ranks after
all K, where the student put it).
"""
from __future__ import annotations

import numpy as np

from eval.metrics import KEYS, retrieval_metrics
from teacher.topk import ScorePart  # (direction, query ids, candidate ids (Q, K)) -> scores (Q, K)


def with_first_stage(score: ScorePart, student_sims: np.ndarray, weight: float) -> ScorePart:
    """`score` plus `weight` x the student's similarity of the same pairs (student_sims: n_img x n_cap)."""
    if weight == 0:
        return score

    def fused(direction: str, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        pairs = student_sims[queries[:, None], candidates] if direction == "i2t" else student_sims[candidates, queries[:, None]]
        return score(direction, queries, candidates) + weight * pairs

    return fused


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Column ids of each row's k highest scores, best first."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _reranked(student: np.ndarray, candidates: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Rows ranked by the teacher over their candidates, above the rest in the student's order."""
    out = student.astype(np.float64)
    out -= out.max() - float(teacher.min()) + 1.0  # every non-candidate now below every candidate
    np.put_along_axis(out, candidates, teacher.astype(np.float64), axis=1)
    return out


def rerank_sims(student_sims: np.ndarray, score: ScorePart, k: int,
                offsets: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """(i2t matrix, t2i matrix) of the two-stage system on one gallery block; k is capped at the
    block's number of captions (i2t) and images (t2i). `score` takes global ids: the block's first
    image and caption are `offsets` in the teacher's encoded split."""
    n_img, n_cap = student_sims.shape
    if k < 1:
        raise ValueError(f"rerank k must be >= 1, got {k}")
    i0, c0 = offsets
    by_image = _top_k(student_sims, min(k, n_cap))  # captions of each image
    by_caption = _top_k(student_sims.T, min(k, n_img))  # images of each caption
    i2t = _reranked(student_sims, by_image, score("i2t", np.arange(n_img) + i0, by_image + c0))
    t2i = _reranked(student_sims.T, by_caption, score("t2i", np.arange(n_cap) + c0, by_caption + i0)).T
    return i2t, t2i


def rerank_metrics(student_sims: np.ndarray, score: ScorePart, k: int, captions_per_image: int = 5,
                   folds: int = 1) -> dict[str, float]:
    """The standard metrics of 'student top-K, teacher re-ranks' (per fold for the COCO 1K protocol)."""
    n_img = student_sims.shape[0]
    if folds < 1 or n_img % folds:
        raise ValueError(f"{n_img} images cannot be split into {folds} equal folds")
    size, per_fold = n_img // folds, []
    for f in range(folds):
        rows, cols = slice(f * size, (f + 1) * size), slice(f * size * captions_per_image, (f + 1) * size * captions_per_image)
        i2t, t2i = rerank_sims(student_sims[rows, cols], score, k, (rows.start, cols.start))
        m_i2t, m_t2i = retrieval_metrics(i2t, captions_per_image), retrieval_metrics(t2i, captions_per_image)
        m = {key: (m_i2t if key.startswith("i2t") else m_t2i)[key] for key in KEYS if key != "rsum"}
        m["rsum"] = sum(m[f"{d}_r{n}"] for d in ("i2t", "t2i") for n in (1, 5, 10))
        per_fold.append(m)
    return {key: float(np.mean([m[key] for m in per_fold])) for key in KEYS}
