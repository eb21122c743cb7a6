import math

import pytest
import torch
import torch.nn.functional as F

from core.data.loading import pair_loader
from core.towers.image import TokenOutput
from student.enhance import CrossModalMemory, SelfGuidedWeights, TokenMemory, hierarchical_concat, masked_mean
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


def test_token_memory_is_a_no_op_until_filled_then_adds_the_attention_weighted_bank_to_valid_tokens():
    torch.manual_seed(0)
    memory = TokenMemory(slots=3, image_width=4, text_width=4, mix=0.5, temperature=0.1, momentum=0.9)
    tokens, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    torch.testing.assert_close(memory.images(tokens, mask), tokens)  # before the first fill
    memory.update(torch.randn(20, 4), torch.randn(20, 4))
    fused = memory.images(tokens, mask)
    # equal widths: the association starts as the identity, so a token reads the softmax-weighted bank
    attention = torch.softmax(F.normalize(tokens, dim=-1) @ memory.text_bank.T / 0.1, dim=-1)
    expected = tokens + 0.5 * tokens.norm(dim=-1, keepdim=True) * (attention @ memory.text_bank)
    torch.testing.assert_close(fused[mask], expected[mask])
    torch.testing.assert_close(fused[~mask], tokens[~mask])  # padding is left alone
    words = torch.randn(2, 5, 4)
    attention = torch.softmax(F.normalize(words, dim=-1) @ memory.image_bank.T / 0.1, dim=-1)
    torch.testing.assert_close(memory.captions(words, torch.ones(2, 5, dtype=torch.bool)),
                               words + 0.5 * words.norm(dim=-1, keepdim=True) * (attention @ memory.image_bank))


def test_token_memory_bridges_token_widths_with_a_learned_association():
    memory = TokenMemory(slots=3, image_width=6, text_width=4, mix=0.5, temperature=0.1, momentum=0.9)
    memory.update(torch.randn(20, 6), torch.randn(20, 4))
    assert memory.image_bank.shape == (3, 6) and memory.text_bank.shape == (3, 4)
    images, words = torch.randn(2, 3, 6, requires_grad=True), torch.randn(2, 5, 4)
    fused = memory.images(images, torch.ones(2, 3, dtype=torch.bool))
    assert fused.shape == images.shape and memory.captions(words, torch.ones(2, 5, dtype=torch.bool)).shape == words.shape
    fused.sum().backward()
    assert memory.text_to_image.weight.grad is not None and memory.text_to_image.weight.grad.abs().sum() > 0


def test_token_banks_learn_from_valid_pre_fusion_tokens_only_and_move_towards_them(text_model_dir):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 2, "level": "token", "momentum": 0.5})
    axes = torch.eye(32)
    padded = torch.stack([axes[0], axes[1], 100 * axes[2]])[None]  # the third token is padding
    mask = torch.tensor([[True, True, False]])
    keys = {"img_tokens": padded, "img_tokens_mask": mask, "txt_tokens": padded, "txt_tokens_mask": mask}
    student.update_memory(keys)
    banks = student.token_memory
    torch.testing.assert_close(banks.image_bank, axes[:2])  # the padding token never entered
    torch.testing.assert_close(banks.text_bank, axes[:2])
    pulled = F.normalize(axes[0] + axes[3], dim=-1)
    student.update_memory({**keys, "img_tokens": pulled[None, None], "img_tokens_mask": torch.ones(1, 1).bool()})
    moved = F.normalize(0.5 * axes[0] + 0.5 * pulled, dim=-1)  # the nearest centre moves, by the shared EMA
    torch.testing.assert_close(banks.image_bank[0], moved)
    torch.testing.assert_close(banks.image_bank[1], axes[1])


@pytest.mark.parametrize("image_pooling", ["tower", "flatten"])
def test_token_memory_student_fuses_tokens_before_pooling(text_model_dir, splits, image_pooling):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 6, "level": "token"},
                         image_pooling=image_pooling)
    plain = build_tiny("student", text_model_dir, image_pooling=image_pooling)
    assert student.memory is None and not student.plain_text_side
    assert {"token_memory.image_bank", "token_memory.text_bank", "token_memory.filled"} <= set(student.state_dict())
    assert not any("bank" in name for name, _ in student.named_parameters())
    batch = _batch(student, splits["train"])
    with torch.no_grad():  # not filled yet: the masked mean of the unchanged tokens, the plain student's pooling
        torch.testing.assert_close(student.encode_text(batch.input_ids, batch.attention_mask),
                                   plain.encode_text(batch.input_ids, batch.attention_mask))
        torch.testing.assert_close(student.encode_images(batch.images), plain.encode_images(batch.images))
        out = student(batch)
        student.update_memory(out)
    assert out["txt_tokens"].shape[:2] == out["txt_local_mask"].shape and not out["txt_local_mask"].all()
    valid = F.normalize(out["txt_tokens"][out["txt_local_mask"]], dim=-1)
    assert torch.allclose((student.token_memory.text_bank @ valid.T).max(dim=1).values, torch.ones(6))
    with torch.no_grad():
        text = student.text_tower(batch.input_ids, batch.attention_mask)
        fused = student.captions_from(text)
        assert not torch.allclose(fused, plain.captions_from(text))
        noisy = text.tokens.masked_fill(~text.mask.unsqueeze(-1), 50.0)  # padding (and the tower's pooling) unused
        torch.testing.assert_close(student.captions_from(TokenOutput(noisy, text.mask, torch.randn_like(text.pooled))),
                                   fused)


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
    def cos(x, y):
        return (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)
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
