import pytest
import torch

from student.pooling import GPO, _encode, sorted_ascending


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


def _reference(gpo: GPO, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per item and channel: the valid values in descending order, weighted by rank k given n valid tokens."""
    out = []
    for item, valid in zip(tokens, mask, strict=True):
        values = item[valid].sort(dim=0, descending=True).values  # (n, C)
        n, ranks = len(values), torch.arange(len(values))
        code = torch.cat([_encode(ranks, gpo.encoding_dim), _encode(torch.full_like(ranks, n), gpo.encoding_dim)], -1)
        weights = torch.softmax(gpo.weights(code).squeeze(-1) / gpo.temperature, dim=0)
        out.append((values * weights[:, None]).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("grad", [False, True])
def test_gpo_weights_each_channels_values_by_their_descending_rank(grad):
    """The NumPy sort (no gradient through the values: frozen features) and torch.sort (a trained top) give
    the weighted sum of each channel's sorted valid values, ties (ReLU6 zeros) and padding included."""
    torch.manual_seed(0)
    gpo = GPO()
    torch.nn.init.normal_(gpo.weights[-1].weight)
    tokens = torch.randn(4, 9, 6).clamp(min=0).requires_grad_(grad)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:], mask[2, 1:] = False, False
    torch.testing.assert_close(gpo(tokens, mask), _reference(gpo, tokens.detach(), mask), rtol=1e-5, atol=1e-6)


def test_sorted_ascending_gives_torch_sorts_values_on_either_path():
    torch.manual_seed(0)
    tokens = torch.randn(3, 81, 40).clamp(min=0)
    expected = tokens.sort(dim=1).values
    assert torch.equal(sorted_ascending(tokens), expected)
    assert torch.equal(sorted_ascending(tokens.clone().requires_grad_(True)).detach(), expected)
