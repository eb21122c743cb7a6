import numpy as np
import pytest

from eval.metrics import retrieval_metrics
from eval.rerank import rerank_metrics, rerank_sims, with_first_stage


def random_sims(seed, n_img=12, cpi=5):
    return np.random.default_rng(seed).normal(size=(n_img, n_img * cpi)).astype(np.float32)


def oracle(teacher):
    """A scorer that reads the teacher's scores of the requested pairs from a full matrix."""
    return lambda direction, queries, cands: (teacher[queries[:, None], cands] if direction == "i2t"
                                             else teacher[cands, queries[:, None]])


def test_full_depth_reranking_is_the_teacher():
    student, teacher = random_sims(0), random_sims(1)
    assert rerank_metrics(student, oracle(teacher), k=60) == pytest.approx(retrieval_metrics(teacher))


def test_depth_one_keeps_the_student_order():
    student, teacher = random_sims(2), random_sims(3)
    assert rerank_metrics(student, oracle(teacher), k=1) == pytest.approx(retrieval_metrics(student))


def test_hand_made_two_stage_ranking():
    """3 images x 1 caption each: the teacher prefers the wrong image, but only inside the student's top-K."""
    student = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.3, 0.0, 0.7]])  # image i, caption j
    teacher = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.0], [0.0, 0.0, 0.9]])
    i2t, t2i = rerank_sims(student, oracle(teacher), k=2)
    # image 0: student top-2 captions {0, 1}; the teacher puts caption 1 first; caption 2 stays last
    assert list(np.argsort(-i2t[0])) == [1, 0, 2]
    # caption 1: student top-2 images {1, 0}; the teacher puts image 0 first; image 2 stays last
    assert list(np.argsort(-t2i[:, 1])) == [0, 1, 2]
    # caption 0: the teacher alone would pick image 1, but it is outside the student's top-2 {0, 2}
    assert list(np.argsort(-t2i[:, 0])) == [0, 2, 1]
    m = rerank_metrics(student, oracle(teacher), k=2, captions_per_image=1)
    assert m["i2t_r1"] == pytest.approx(100 / 3) and m["t2i_r1"] == pytest.approx(200 / 3)


def test_folds_rerank_within_each_fold():
    student, teacher = random_sims(4, n_img=10), random_sims(5, n_img=10)
    assert rerank_metrics(student, oracle(teacher), k=10, folds=5) == pytest.approx(retrieval_metrics(teacher, folds=5))
    with pytest.raises(ValueError, match=">= 1"):
        rerank_metrics(student, oracle(teacher), k=0)


def test_first_stage_score_is_added_with_its_weight():
    student, teacher = random_sims(6), random_sims(7)
    fused = with_first_stage(oracle(teacher), student, 0.5)
    assert rerank_metrics(student, fused, k=5) == pytest.approx(rerank_metrics(student, oracle(teacher + 0.5 * student), k=5))
    alone = oracle(teacher)
    assert with_first_stage(alone, student, 0.0) is alone
