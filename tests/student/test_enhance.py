import math

import pytest
import torch
import torch.nn.functional as F

from core.data.loading import pair_loader
from student.enhance import CrossModalMemory, SelfGuidedWeights, hierarchical_concat, masked_mean
from tests.conftest import build_tiny


def _batch(student, split, size=6):
    loader = pair_loader(split, student.image_tower.preprocess(), student.tokenize, size, batching="random",
                         generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


def test_banks_start_from_the_first_batch_then_follow_their_nearest_embeddings():
    memory = CrossModalMemory(slots=3, dim=4, mix=0.5, temperature=0.1, momentum=0.9)
    axes = torch.eye(4)
    memory.update(axes[:2] * 2, axes[2:] * 3)  # fewer rows than slots: they repeat, normalised
    assert float(memory.filled) == 1.0
    torch.testing.assert_close(memory.image_bank, axes[[0, 1, 0]])
    torch.testing.assert_close(memory.text_bank, axes[[2, 3, 2]])
    pulled = F.normalize(torch.tensor([[1.0, 0.2, 0, 0], [1.0, -0.2, 0, 0]]), dim=-1)  # both nearest to slot 0
    before = memory.image_bank.clone()
    memory.update(pulled, axes[2:3])
    mean = F.normalize(pulled.sum(0), dim=-1)
    torch.testing.assert_close(memory.image_bank[0], F.normalize(0.9 * before[0] + 0.1 * mean, dim=-1))
    torch.testing.assert_close(memory.image_bank[1:], before[1:])  # slots nearest to no row stay
    torch.testing.assert_close(memory.image_bank.norm(dim=1), torch.ones(3))


def test_memory_read_is_the_attention_weighted_bank_and_empty_banks_pass_through():
    memory = CrossModalMemory(slots=3, dim=4, mix=0.5, temperature=0.1, momentum=0.9)
    emb = F.normalize(torch.randn(5, 4), dim=-1)
    torch.testing.assert_close(memory.images(emb), emb)  # before the first update
    memory.update(torch.randn(20, 4), torch.randn(20, 4))
    assert memory.image_bank.shape == memory.text_bank.shape == (3, 4) and float(memory.filled) == 1.0
    attention = torch.softmax(emb @ memory.text_bank.T / 0.1, dim=-1)  # (5, slots): each row sums to 1
    expected = F.normalize(emb + 0.5 * attention @ memory.text_bank, dim=-1)
    torch.testing.assert_close(memory.images(emb), expected)
    same = CrossModalMemory(slots=2, dim=4, mix=1.0, temperature=0.1, momentum=0.9)
    same.text_bank.copy_(torch.tensor([[1.0, 0, 0, 0]] * 2))
    same.filled.fill_(1.0)
    torch.testing.assert_close(same.images(emb), F.normalize(emb + torch.tensor([1.0, 0, 0, 0]), dim=-1))


def test_memory_banks_are_constant_buffers_at_inference(text_model_dir, splits):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 6})
    assert {"memory.image_bank", "memory.text_bank", "memory.filled"} <= set(student.state_dict())
    assert not any(name.startswith("memory.") for name, _ in student.named_parameters())
    student.memory.update(torch.randn(40, 32), torch.randn(40, 32))
    banks = {k: v.clone() for k, v in student.memory.state_dict().items()}
    batch = _batch(student, splits["train"])
    student.train()
    out = student(batch)
    (out["sims"].sum() + out["img_emb"].sum()).backward()
    with torch.no_grad():
        first = student.encode_images(batch.images)
        assert torch.equal(first, student.encode_images(batch.images))
    for k, v in student.memory.state_dict().items():
        assert torch.equal(v, banks[k]), k
    assert out["img_base"].shape == out["img_global"].shape == (6, 32)
    assert not torch.allclose(out["img_base"], out["img_global"])  # the read changed the embedding


def test_self_guided_weights_start_uniform_and_ignore_padding():
    torch.manual_seed(0)
    weights = SelfGuidedWeights(width=8, attention_dim=4)
    tokens, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    torch.testing.assert_close(weights(tokens, mask)[mask], tokens[mask])  # zero query: every weight is 1
    torch.nn.init.normal_(weights.query.weight)
    reweighted = weights(tokens, mask)
    assert torch.all(reweighted[~mask] == 0)
    padded = tokens.clone()
    padded[0, 3:] = 100.0  # padding changes nothing
    torch.testing.assert_close(weights(padded, mask)[mask], reweighted[mask])
    ratio = (reweighted / tokens)[..., 0]  # per-token weights: mean 1 over the valid tokens
    torch.testing.assert_close((ratio * mask).sum(1) / mask.sum(1), torch.ones(2))
    assert not torch.allclose(masked_mean(reweighted, mask), masked_mean(tokens, mask))


def test_self_guided_student_pools_by_attention(text_model_dir, splits):
    student = build_tiny("student", text_model_dir, self_guided={"attention_dim": 8}, image_pooling="tower")
    plain = build_tiny("student", text_model_dir, image_pooling="tower")
    batch = _batch(student, splits["train"])
    with torch.no_grad():  # zero-initialised query: the attention pooling is the mean pooling
        torch.testing.assert_close(student.encode_text(batch.input_ids, batch.attention_mask),
                                   plain.encode_text(batch.input_ids, batch.attention_mask))
    assert not student.plain_text_side and plain.plain_text_side


def test_concatenated_embedding_is_unit_norm_and_scores_a_weighted_mean():
    torch.manual_seed(0)
    g, l, g2, l2 = torch.randn(3, 4), torch.randn(3, 2), torch.randn(3, 4), torch.randn(3, 2)
    a, b = hierarchical_concat(g, l, 1.0, 0.5), hierarchical_concat(g2, l2, 1.0, 0.5)
    assert a.shape == (3, 6)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    cos = lambda x, y: (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)
    torch.testing.assert_close((a * b).sum(-1), (1.0 * cos(g, g2) + 0.25 * cos(l, l2)) / 1.25)
    torch.testing.assert_close(hierarchical_concat(g, l, 0.0, 2.0)[:, 4:], F.normalize(l, dim=-1))
    assert math.isclose(float(hierarchical_concat(g, l, 3.0, 4.0).norm(dim=1).max()), 1.0, rel_tol=1e-6)


def test_hierarchical_student_ships_the_concatenation(text_model_dir, splits):
    student = build_tiny("student", text_model_dir, hierarchy={"local_dim": 16, "local_weight": 0.5})
    batch = _batch(student, splits["train"])
    with torch.no_grad():
        out = student(batch)
    assert student.embedding_dim == 48 and out["img_emb"].shape == (6, 48) and out["img_lex"].shape == (6, 16)
    torch.testing.assert_close(out["img_emb"].norm(dim=1), torch.ones(6))
    torch.testing.assert_close(out["img_emb"], hierarchical_concat(out["img_global"], out["img_lex"], 1.0, 0.5))
    torch.testing.assert_close(out["sims"], out["img_emb"] @ out["txt_emb"].T)


@pytest.mark.parametrize("bad", [{"local_dim": -1}, {"global_weight": 0.0, "local_weight": 0.0}])
def test_hierarchy_settings_are_validated(bad):
    from core.config import HierarchyConfig

    assert HierarchyConfig(**bad).problems()
