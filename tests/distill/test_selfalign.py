import pytest
import torch
import torch.nn.functional as F

from distill.selfalign import concept_alignment, context_alignment, sinkhorn


def test_sinkhorn_gives_uniform_prototype_marginals_and_rows_summing_to_one():
    scores = torch.randn(40, 8) * 3
    q = sinkhorn(scores, epsilon=0.5, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(40))
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 5.0), atol=1e-3, rtol=0)
    assert (q >= 0).all()


def test_sinkhorn_spreads_items_that_all_prefer_one_prototype():
    scores = torch.tensor([[1.0, 0.0]] * 4)  # every item prefers prototype 0
    q = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(q.sum(dim=0), torch.tensor([2.0, 2.0]), atol=1e-4, rtol=0)


def reference_concept(queries, qmask, context, cmask, protos, temperature, epsilon, iterations):
    """The same loss written token by token."""
    protos = F.normalize(protos, dim=-1)
    flat = context[cmask]
    codes = sinkhorn(flat @ protos.T, epsilon, iterations)
    positions = cmask.nonzero().tolist()
    total, count = 0.0, 0
    for b in range(len(queries)):
        for t in range(queries.shape[1]):
            if not qmask[b, t]:
                continue
            best = max((i for i, (bb, _) in enumerate(positions) if bb == b),
                       key=lambda i: float(queries[b, t] @ flat[i]))
            log_p = torch.log_softmax(queries[b, t] @ protos.T / temperature, dim=-1)
            total += -(codes[best] * log_p).sum()
            count += 1
    return total / count


def test_concept_alignment_matches_the_token_by_token_definition_and_ignores_padding():
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(2, 4, 6), dim=-1)
    context = F.normalize(torch.randn(2, 5, 6), dim=-1)
    qmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    cmask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    protos = torch.randn(3, 6)
    got = concept_alignment(queries, qmask, context, cmask, protos, 0.1, 0.5, 5)
    torch.testing.assert_close(got, reference_concept(queries, qmask, context, cmask, protos, 0.1, 0.5, 5))
    # garbage in padded positions changes nothing
    noisy_q, noisy_c = queries.clone(), context.clone()
    noisy_q[~qmask] = 10.0
    noisy_c[~cmask] = 10.0
    torch.testing.assert_close(concept_alignment(noisy_q, qmask, noisy_c, cmask, protos, 0.1, 0.5, 5), got)


def test_concept_alignment_trains_the_queries_and_the_prototypes_only():
    queries = F.normalize(torch.randn(2, 3, 4), dim=-1).requires_grad_()
    context = F.normalize(torch.randn(2, 3, 4), dim=-1).requires_grad_()
    protos = torch.randn(5, 4, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    concept_alignment(queries, mask, context, mask, protos, 0.1, 0.05, 3).backward()
    assert queries.grad.abs().sum() > 0 and protos.grad.abs().sum() > 0
    assert context.grad is None  # the targets and the matches are constants


def by_hand(g, local, queued, queued_ids, t):
    """Mean over pairs and their tokens of -log(e^u / (e^u + sum of negatives' e^v)), pairs of images 0 and 1."""
    losses = []
    for b in (0, 1):
        u = g[b] @ local[b].T / t
        negatives = [g[b] @ local[1 - b].T / t] + [g[b] @ queued[i] / t * torch.ones(1) for i in range(len(queued))
                                                     if queued_ids[i] != b]
        neg = torch.cat(negatives).logsumexp(0)
        losses.append(torch.logaddexp(u, neg) - u)
    return torch.cat(losses).mean()


def test_context_alignment_takes_queued_tokens_of_other_images_as_negatives():
    g = F.normalize(torch.randn(2, 4), dim=-1)
    local = F.normalize(torch.randn(2, 3, 4), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    ids = torch.tensor([0, 1])
    queued = F.normalize(torch.randn(5, 4), dim=-1)
    plain = context_alignment(g, local, mask, ids, 0.1)
    assert plain.item() == pytest.approx(by_hand(g, local, queued[:0], [], 0.1).item(), abs=1e-5)
    for queued_ids in ([0, 0, 1, 1, 0], [7] * 5, [0] * 5):
        got = context_alignment(g, local, mask, ids, 0.1, queued, torch.tensor(queued_ids))
        assert got.item() == pytest.approx(by_hand(g, local, queued, queued_ids, 0.1).item(), abs=1e-5)
    assert context_alignment(g, local, mask, ids, 0.1, queued, torch.tensor([7] * 5)) > plain
