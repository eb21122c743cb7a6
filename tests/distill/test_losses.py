import math

import pytest
import torch
import torch.nn.functional as F

from core.config import LossesConfig, MomentumConfig, StudentConfig, TeacherConfig
from distill.losses import hinge, infonce, listnet, same_image_off_diagonal
from distill.selfalign import context_alignment
from distill.terms import ContrastiveTerm, KDTerm, Objective, StepContext, student_objective, teacher_objective


def test_same_image_mask():
    mask = same_image_off_diagonal(torch.tensor([3, 3, 5, 3]))
    assert mask.tolist() == [[False, True, False, True], [True, False, False, True],
                             [False, False, False, False], [True, True, False, False]]


def test_infonce_hand_worked():
    sims = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    scale = 2.0
    row = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(2) / (math.exp(2) + math.exp(1)))) / 2
    col = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1))) - math.log(math.exp(2) / (math.exp(2) + 1))) / 2
    assert infonce(sims, torch.tensor([0, 1]), scale).item() == pytest.approx((row + col) / 2, abs=1e-6)


def test_infonce_ignores_captions_of_the_same_image():
    sims = torch.randn(3, 3)
    ids = torch.tensor([0, 0, 1])
    changed = sims.clone()
    changed[0, 1] = changed[1, 0] = 50.0  # same-image pairs: must not act as negatives
    assert infonce(changed, ids, 5.0).item() == pytest.approx(infonce(sims, ids, 5.0).item())


def test_hinge_hardest_and_sum():
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.0, 0.7]])
    ids = torch.tensor([0, 1, 2])
    m = 0.2
    # image rows: i0: max(0.2-0.9+0.8, 0.2-0.9+0.1)=0.1; i1: max(0.2-0.5+0.2, 0.2-0.5+0.6)=0.3; i2: 0
    # caption columns: c0: max(0.2-0.9+0.2, 0)=0; c1: 0.2-0.5+0.8=0.5; c2: 0.2-0.7+0.6=0.1
    assert hinge(sims, ids, m, True).item() == pytest.approx((0.1 + 0.3 + 0 + 0 + 0.5 + 0.1) / 3, abs=1e-6)
    # sum: rows 0.1+0 | 0+0.3 | 0 ; cols 0+0 | 0.5+0 | 0+0.1
    assert hinge(sims, ids, m, False).item() == pytest.approx((0.1 + 0.3 + 0.5 + 0.1) / 3, abs=1e-6)
    # a same-image pair is never a negative
    assert hinge(sims, torch.tensor([0, 0, 2]), m, True).item() < hinge(sims, ids, m, True).item()


def test_listnet_minimum_is_the_teacher_entropy():
    teacher = torch.randn(4, 4)
    ids = torch.arange(4)
    tau, scale = 0.05, 20.0
    matched = (teacher / tau / scale).requires_grad_(True)  # student logits equal the teacher's
    loss = listnet(matched, teacher, ids, tau, scale)
    p_rows, p_cols = torch.softmax(teacher / tau, 1), torch.softmax(teacher / tau, 0)
    entropy = (-(p_rows * p_rows.log()).sum(1).mean() - (p_cols * p_cols.log()).sum(0).mean()) / 2
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-5)
    loss.backward()
    assert matched.grad.abs().max().item() < 1e-5  # the optimum
    assert listnet(torch.randn(4, 4), teacher, ids, tau, scale).item() > loss.item()


def test_listnet_masks_same_image_pairs():
    teacher, student = torch.randn(3, 3), torch.randn(3, 3)
    ids = torch.tensor([7, 7, 1])
    t2, s2 = teacher.clone(), student.clone()
    t2[0, 1] = t2[1, 0] = s2[0, 1] = s2[1, 0] = 100.0
    assert listnet(s2, t2, ids, 0.1, 10.0).item() == pytest.approx(listnet(student, teacher, ids, 0.1, 10.0).item())
    assert torch.isfinite(listnet(s2, t2, ids, 0.1, 10.0))


def test_context_alignment_hand_worked():
    # two pairs, one local token each: InfoNCE with one negative per anchor
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    local = torch.tensor([[[0.6, 0.8]], [[0.8, 0.6]]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    t = 0.5
    u = g @ local[:, 0].T / t  # u[a, b]
    expected = torch.stack([-u[a, a] + torch.logaddexp(u[a, a], u[a, 1 - a]) for a in range(2)]).mean()
    got = context_alignment(g, local, mask, torch.tensor([0, 1]), t)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_context_alignment_ignores_masked_tokens():
    g = F.normalize(torch.randn(3, 4), dim=-1)
    local = F.normalize(torch.randn(3, 5, 4), dim=-1)
    mask = torch.rand(3, 5) > 0.4
    mask[:, 0] = True
    ids = torch.arange(3)
    base = context_alignment(g, local, mask, ids, 0.1)
    moved = local.masked_fill(~mask[..., None], 9.0)
    assert context_alignment(g, moved, mask, ids, 0.1).item() == pytest.approx(base.item(), abs=1e-6)


def test_context_alignment_has_no_negatives_within_one_image():
    g = F.normalize(torch.randn(2, 4), dim=-1)
    local = F.normalize(torch.randn(2, 3, 4), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert context_alignment(g, local, mask, torch.tensor([4, 4]), 0.1).item() == 0.0
    assert context_alignment(g, local, mask, torch.tensor([4, 5]), 0.1).item() > 0.0


def test_objective_weights_and_names():
    cfg = LossesConfig()
    cfg.contrastive.weight, cfg.kd.weight, cfg.align.weight, cfg.cached_kd.weight, cfg.concept.weight = 1.0, 0.5, 0, 0, 0
    with pytest.raises(ValueError, match="resolved"):
        student_objective(StudentConfig(embed_dim=4, losses=cfg))  # 'auto' temperature needs the score cache
    cfg.kd.teacher_temperature = 0.1
    obj = student_objective(StudentConfig(embed_dim=4, losses=cfg))
    assert [t.name for t in obj.terms] == ["contrastive", "kd"] and obj.needs_teacher and not obj.needs_lists
    sims = torch.randn(3, 3)
    batch = type("B", (), {"image_index": torch.arange(3), "caption_index": torch.arange(3)})()
    teacher = torch.randn(3, 3)
    total, parts = obj({"sims": sims}, batch, StepContext(teacher=lambda i, c: teacher[i][:, c]))
    assert total.item() == pytest.approx(parts["contrastive"] + 0.5 * parts["kd"], abs=1e-5)
    with pytest.raises(ValueError, match="teacher scores"):
        obj({"sims": sims}, batch, StepContext())
    assert [t.name for t in teacher_objective(TeacherConfig()).terms] == ["hinge"]
    with pytest.raises(ValueError, match="at least one"):
        Objective([])


def test_learnable_temperature_is_a_parameter():
    assert len(list(ContrastiveTerm(1.0, 0.07, True).parameters())) == 1
    assert len(list(ContrastiveTerm(1.0, 0.07, False).parameters())) == 0
    assert KDTerm(1.0, 0.1, 10.0).weight == 1.0


def test_calibrated_temperature_gives_the_target_logit_spread():
    import numpy as np

    from distill.losses import calibrated_teacher_temperature
    from teacher.online import dense_lookup

    rng = np.random.default_rng(0)
    scores = 1.0 + 0.03 * rng.normal(size=(200, 1000))
    tau, spread = calibrated_teacher_temperature(dense_lookup(scores), 200, 5, 64, logit_std=6.0)
    assert spread == pytest.approx(0.03, rel=0.05) and tau == pytest.approx(spread / 6.0)
    tau10, _ = calibrated_teacher_temperature(dense_lookup(scores * 10), 200, 5, 64, logit_std=6.0)
    assert tau10 == pytest.approx(10 * tau, rel=1e-6)  # scale-free: 10x the spread, 10x the temperature
    with pytest.raises(ValueError, match="do not vary"):
        calibrated_teacher_temperature(dense_lookup(np.ones((20, 100))), 20, 5, 8, 6.0)


def test_queued_candidates_extend_infonce_and_listnet_as_extra_columns():
    from distill.losses import Beyond

    torch.manual_seed(0)
    sims, extra_i2t, extra_t2i = torch.randn(3, 3), torch.randn(3, 2), torch.randn(3, 2)
    ids = torch.tensor([0, 0, 1])
    none = torch.zeros(3, 2, dtype=torch.bool)
    # the queued columns are ordinary extra negatives: InfoNCE over [batch | queue]
    got = infonce(sims, ids, 2.0, Beyond(extra_i2t, none, extra_t2i, none))
    i2t = torch.cat([sims, extra_i2t], 1) * 2.0
    t2i = torch.cat([sims.T, extra_t2i], 1) * 2.0
    for rows in (i2t, t2i):
        rows[0, 1] = rows[1, 0] = float("-inf")  # two captions of image 0
    expected = (F.cross_entropy(i2t, torch.arange(3)) + F.cross_entropy(t2i, torch.arange(3))) / 2
    torch.testing.assert_close(got, expected)
    # queued pairs of a row's own image are excluded: all excluded = no queue
    everything = torch.ones(3, 2, dtype=torch.bool)
    torch.testing.assert_close(infonce(sims, ids, 2.0, Beyond(extra_i2t, everything, extra_t2i, everything)),
                               infonce(sims, ids, 2.0))
    teacher = torch.randn(3, 3)
    t_beyond = Beyond(torch.randn(3, 2), everything, torch.randn(3, 2), everything)
    torch.testing.assert_close(listnet(sims, teacher, ids, 0.1, 5.0, Beyond(extra_i2t, everything, extra_t2i, everything),
                                       t_beyond), listnet(sims, teacher, ids, 0.1, 5.0))


def test_candidate_listnet_by_hand():
    from distill.losses import candidate_listnet

    query = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    teacher = torch.tensor([[0.5, 0.5]])  # equal scores: a uniform target
    student_logits = torch.tensor([[1.0, 0.0]]) * 3.0
    expected = -(0.5 * torch.log_softmax(student_logits, 1)).sum()
    torch.testing.assert_close(candidate_listnet(query, candidates, teacher, 0.1, 3.0), expected)


def test_cached_kd_term_reads_each_querys_list_and_the_bank():
    import numpy as np

    from distill.memory import EmbeddingBank
    from distill.terms import CachedKDTerm

    bank = EmbeddingBank(F.normalize(torch.randn(4, 3), dim=-1), F.normalize(torch.randn(8, 3), dim=-1))
    lists = {"t2i_candidates": np.array([[0, 1, 2]] * 8), "t2i_scores": np.tile(np.float32([0.3, 0.2, 0.1]), (8, 1)),
             "i2t_candidates": np.array([[0, 5, 6]] * 4), "i2t_scores": np.tile(np.float32([0.3, 0.1, 0.0]), (4, 1))}
    out = {"img_emb": F.normalize(torch.randn(2, 3), dim=-1), "txt_emb": F.normalize(torch.randn(2, 3), dim=-1)}
    batch = type("B", (), {"image_index": torch.tensor([0, 3]), "caption_index": torch.tensor([1, 7])})()
    term = CachedKDTerm(1.0, candidates=2, teacher_temperature=0.1, student_scale=5.0)
    got = term(out, batch, StepContext(bank=bank, lists=lists))
    from distill.losses import candidate_listnet
    t2i = candidate_listnet(out["txt_emb"], bank.images[torch.tensor([[0, 1], [0, 1]])], torch.tensor([[0.3, 0.2]] * 2), 0.1, 5.0)
    i2t = candidate_listnet(out["img_emb"], bank.captions[torch.tensor([[0, 5], [0, 5]])], torch.tensor([[0.3, 0.1]] * 2), 0.1, 5.0)
    torch.testing.assert_close(got, (t2i + i2t) / 2)
    with pytest.raises(ValueError, match="top-K score cache"):
        term(out, batch, StepContext())


def test_only_the_terms_named_in_queue_terms_read_the_queues():
    from distill.memory import Queued

    cfg = LossesConfig()
    cfg.align.weight = cfg.cached_kd.weight = cfg.concept.weight = 0.0
    cfg.kd.teacher_temperature = 0.1
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    out = {"img_emb": emb[0], "txt_emb": emb[1], "sims": emb[0] @ emb[1].T}
    batch = type("B", (), {"image_index": torch.arange(3), "caption_index": torch.arange(3)})()
    teacher = torch.randn(5, 5)
    queued = Queued(F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1), torch.tensor([3, 4]),
                    torch.tensor([3, 4]), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4),
                    torch.zeros(0, dtype=torch.long))
    def lookup(i, c):
        return teacher[i][:, c]

    def parts(queue_terms):
        student = StudentConfig(embed_dim=4, losses=cfg, momentum=MomentumConfig(queue_terms=queue_terms))
        return student_objective(student)(out, batch, StepContext(teacher=lookup, queued=queued))[1]

    alone = student_objective(StudentConfig(embed_dim=4, losses=cfg))(out, batch, StepContext(teacher=lookup))[1]
    kd_only, both = parts(["kd"]), parts(["contrastive", "kd"])
    assert kd_only["contrastive"] == pytest.approx(alone["contrastive"]) and kd_only["kd"] != pytest.approx(alone["kd"])
    assert both["contrastive"] != pytest.approx(alone["contrastive"]) and both["kd"] == pytest.approx(kd_only["kd"])
