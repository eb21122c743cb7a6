import pytest
import torch
import torch.nn.functional as F

from core.config import ImramConfig, ScanConfig
from teacher.attention import scan_similarity
from teacher.iterative import GatedMemory, iterative_scores
from teacher.matching import Matcher
from tests.teacher.test_attention import random_inputs


def unit_inputs(seed=0):
    regions, rmask, words, wmask = random_inputs(seed)
    return F.normalize(regions, dim=-1), rmask, F.normalize(words, dim=-1), wmask


def matcher(side="full", steps=3, **scan):
    torch.manual_seed(0)
    return Matcher("imram", ScanConfig(**scan), ImramConfig(steps=steps, side=side), dim=12)


@pytest.mark.parametrize("side", ["text", "image", "full"])
def test_scores_every_pair_with_finite_gradients(side):
    regions, rmask, words, wmask = unit_inputs()
    regions.requires_grad_(True)
    m = matcher(side)
    sims = m.all_pairs(regions, rmask, words, wmask)
    assert sims.shape == (5, 7) and torch.isfinite(sims).all()
    sims.sum().backward()
    assert torch.isfinite(regions.grad).all()
    memories = [p for n, p in m.named_parameters() if "memory" in n]
    assert memories and all(p.grad is not None and torch.isfinite(p.grad).all() for p in memories)


@pytest.mark.parametrize("side", ["text", "image"])
def test_padded_tokens_take_no_part(side):
    regions, rmask, words, wmask = unit_inputs(seed=1)
    m = matcher(side)
    base = m.all_pairs(regions, rmask, words, wmask)
    noisy_regions = torch.where(rmask[..., None], regions, torch.randn_like(regions) * 50)
    noisy_words = torch.where(wmask[..., None], words, torch.randn_like(words) * 50)
    torch.testing.assert_close(m.all_pairs(noisy_regions, rmask, noisy_words, wmask), base)


@pytest.mark.parametrize("side,direction", [("text", "t2i"), ("image", "i2t")])
def test_one_step_is_scan(side, direction):
    regions, rmask, words, wmask = unit_inputs(seed=2)
    scan = ScanConfig()
    lam = (scan.lambda_softmax, scan.lambda_lse) if direction == "t2i" else (scan.i2t_lambda_softmax, scan.i2t_lambda_lse)
    expected = scan_similarity(regions, rmask, words, wmask, direction, "lse", *lam)
    torch.testing.assert_close(matcher(side, steps=1).all_pairs(regions, rmask, words, wmask), expected,
                               atol=1e-5, rtol=1e-5)


def test_score_is_the_sum_of_step_scores():
    """A memory whose gate is shut (g = 1) keeps the query unchanged, so every step repeats step one."""
    regions, rmask, words, wmask = unit_inputs(seed=3)
    memory = GatedMemory(12)
    with torch.no_grad():
        memory.gate.weight.zero_()
        memory.gate.bias.fill_(40.0)
    one = iterative_scores(words[None], wmask[None], regions[:, None], rmask[:, None], memory, 1, "mean", 9.0, 6.0)
    three = iterative_scores(words[None], wmask[None], regions[:, None], rmask[:, None], memory, 3, "mean", 9.0, 6.0)
    torch.testing.assert_close(three, 3 * one, atol=1e-5, rtol=1e-5)
    # an open gate refines the query: later steps differ
    with torch.no_grad():
        memory.gate.bias.fill_(0.0)
    refined = iterative_scores(words[None], wmask[None], regions[:, None], rmask[:, None], memory, 3, "mean", 9.0, 6.0)
    assert (refined - 3 * one).abs().max() > 1e-3


def test_full_side_sums_text_and_image_sides():
    regions, rmask, words, wmask = unit_inputs(seed=4)
    full = matcher("full")
    text, image = matcher("text"), matcher("image")
    text.text_memory.load_state_dict(full.text_memory.state_dict())
    image.image_memory.load_state_dict(full.image_memory.state_dict())
    torch.testing.assert_close(full.all_pairs(regions, rmask, words, wmask),
                               text.all_pairs(regions, rmask, words, wmask) + image.all_pairs(regions, rmask, words, wmask))


def test_blocked_scores_equal_one_block():
    regions, rmask, words, wmask = unit_inputs(seed=5)
    small = matcher("full", max_chunk_elements=64)  # forces many blocks
    big = matcher("full")
    torch.testing.assert_close(small.all_pairs(regions, rmask, words, wmask), big.all_pairs(regions, rmask, words, wmask))


def test_pairs_equal_all_pairs():
    regions, rmask, words, wmask = unit_inputs(seed=6)
    m = matcher("full")
    full = m.all_pairs(regions, rmask, words, wmask)
    candidates = torch.tensor([[3, 1], [0, 4]])
    got = m.pairs(regions[candidates], rmask[candidates], words[[5, 2], None], wmask[[5, 2], None])
    torch.testing.assert_close(got, full[candidates, torch.tensor([[5], [2]])], atol=1e-5, rtol=1e-5)


def test_scan_ensemble_averages_both_directions():
    regions, rmask, words, wmask = unit_inputs(seed=7)
    scan = ScanConfig(direction="ensemble")
    got = Matcher("scan", scan, ImramConfig(), 12).all_pairs(regions, rmask, words, wmask)
    t2i = scan_similarity(regions, rmask, words, wmask, "t2i", "lse", scan.lambda_softmax, scan.lambda_lse)
    i2t = scan_similarity(regions, rmask, words, wmask, "i2t", "lse", scan.i2t_lambda_softmax, scan.i2t_lambda_lse)
    torch.testing.assert_close(got, (t2i + i2t) / 2)
