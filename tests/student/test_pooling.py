import torch

from student.pooling import GPO


def test_gpo_starts_as_mean_pooling_over_valid_tokens():
    torch.manual_seed(0)
    tokens, mask = torch.randn(3, 5, 4), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    pooled = GPO()(tokens, mask)
    for i in range(3):
        torch.testing.assert_close(pooled[i], tokens[i, mask[i]].mean(0))


def test_gpo_can_learn_max_pooling_and_ignores_padding():
    torch.manual_seed(0)
    gpo = GPO(temperature=1e-3)
    rank_logit = torch.nn.Linear(2 * gpo.encoding_dim, 1)
    with torch.no_grad():  # logit cos(k): largest at sorted position k = 0, so all weight there (max pooling)
        rank_logit.weight.zero_()
        rank_logit.bias.zero_()
        rank_logit.weight[0, gpo.encoding_dim // 2] = 1.0
    gpo.weights = rank_logit
    tokens = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    padded = tokens.clone()
    padded[0, 4:] = 100.0  # padding must never win the max
    pooled = gpo(padded, mask)
    torch.testing.assert_close(pooled[0], tokens[0, :4].max(0).values)
    torch.testing.assert_close(pooled[1], tokens[1].max(0).values)


def test_gpo_weights_learn():
    gpo = GPO()
    tokens, mask = torch.randn(4, 7, 8), torch.ones(4, 7, dtype=torch.bool)
    gpo(tokens, mask).sum().backward()
    assert gpo.weights[-1].weight.grad is not None and gpo.weights[-1].weight.grad.abs().sum() > 0
