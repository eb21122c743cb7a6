import math

import pytest
import torch
import torch.nn.functional as F

from core.length_groups import SLACK
from teacher.attention import pair_blocks, scan_pair_scores, scan_similarity
from teacher.reference import scan_similarity_loop

LAMBDAS = {"t2i": (9.0, 6.0), "i2t": (4.0, 5.0)}


def random_inputs(seed=0, n_img=5, n_cap=7, n_reg=6, n_word=8, dim=12):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n_img, n_reg, dim, generator=g)
    words = torch.randn(n_cap, n_word, dim, generator=g)
    region_mask = torch.rand(n_img, n_reg, generator=g) > 0.3
    word_mask = torch.rand(n_cap, n_word, generator=g) > 0.3
    region_mask[:, 0] = True
    word_mask[:, 0] = True
    return regions, region_mask, words, word_mask


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("aggregation", ["lse", "mean"])
def test_matches_caption_by_caption_reference(direction, aggregation):
    regions, rmask, words, wmask = random_inputs()
    lam = LAMBDAS[direction]
    fast = scan_similarity(regions, rmask, words, wmask, direction, aggregation, *lam)
    slow = scan_similarity_loop(regions, rmask, words, wmask, direction, aggregation, *lam)
    assert fast.shape == (5, 7)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_padded_tokens_take_no_part(direction):
    regions, rmask, words, wmask = random_inputs(1)
    base = scan_similarity(regions, rmask, words, wmask, direction)
    regions2, words2 = regions.clone(), words.clone()
    regions2[~rmask] = 1e3 * torch.randn_like(regions2[~rmask])
    words2[~wmask] = -7.0
    torch.testing.assert_close(scan_similarity(regions2, rmask, words2, wmask, direction), base)
    # and dropping trailing padding entirely gives the same scores
    torch.testing.assert_close(scan_similarity(regions, rmask, words[:, :1], wmask[:, :1], direction),
                               scan_similarity(regions, rmask, words[:, :1].clone(), wmask[:, :1], direction))


@pytest.mark.parametrize("chunk", [1, 37, 10**9])
def test_chunking_does_not_change_scores(chunk):
    regions, rmask, words, wmask = random_inputs(2)
    ref = scan_similarity(regions, rmask, words, wmask)
    torch.testing.assert_close(scan_similarity(regions, rmask, words, wmask, max_chunk_elements=chunk), ref)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_captions_are_scored_in_length_groups_trimmed_of_padding(direction, monkeypatch):
    import teacher.attention as attention

    g = torch.Generator().manual_seed(4)
    regions, words = torch.randn(6, 5, 8, generator=g), torch.randn(40, 30, 8, generator=g)
    lengths = torch.randint(2, 31, (40,), generator=g)
    lengths[0] = 30  # one long caption pads every other one to 30 words
    word_mask, region_mask = torch.arange(30)[None] < lengths[:, None], torch.ones(6, 5, dtype=torch.bool)
    lam = LAMBDAS[direction]
    logits = []
    scores_from_logits = attention.scores_from_logits
    monkeypatch.setattr(attention, "scores_from_logits", lambda x, *a: logits.append(x.numel()) or scores_from_logits(x, *a))
    fast = scan_similarity(regions, region_mask, words, word_mask, direction, "lse", *lam)
    torch.testing.assert_close(fast, scan_similarity_loop(regions, region_mask, words, word_mask, direction, "lse", *lam),
                               atol=1e-5, rtol=1e-5)
    valid = int(lengths.sum()) * 6 * 5
    assert valid <= sum(logits) <= valid / SLACK < words.shape[0] * 30 * 6 * 5


def test_single_region_score_is_the_cosine():
    # one region: every word attends to it fully, relevance = cos(word, region)
    region = torch.tensor([[[1.0, 0.0]]])
    words = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    def ones(t):
        return torch.ones(t.shape[:2], dtype=torch.bool)
    cos = torch.tensor([1 / math.sqrt(2), 0.0])
    mean = scan_similarity(region, ones(region), words, ones(words), aggregation="mean")
    assert mean.item() == pytest.approx(cos.mean().item(), abs=1e-6)
    lse = scan_similarity(region, ones(region), words, ones(words), aggregation="lse", lambda_lse=6.0)
    assert lse.item() == pytest.approx((torch.logsumexp(6.0 * cos, 0) / 6.0).item(), abs=1e-6)


def test_hand_worked_two_regions():
    # one word w=(1,0); regions v1=(1,0), v2=(0,1). Logits s=(1,0); LeakyReLU keeps them;
    # l2norm over the single query word makes each 1 (s1) and 0 (s2): alpha = softmax(9*(1,0)).
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    word = torch.tensor([[[1.0, 0.0]]])
    def ones(t):
        return torch.ones(t.shape[:2], dtype=torch.bool)
    a1 = math.exp(9) / (math.exp(9) + 1)
    attended = torch.tensor([a1, 1 - a1])
    expected = F.cosine_similarity(attended, torch.tensor([1.0, 0.0]), dim=0).item()
    got = scan_similarity(regions, ones(regions), word, ones(word), aggregation="mean", lambda_softmax=9.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_gradients_flow_to_both_sides():
    regions, rmask, words, wmask = random_inputs(3)
    regions.requires_grad_(True)
    words.requires_grad_(True)
    scan_similarity(regions, rmask, words, wmask).sum().backward()
    assert regions.grad.abs().sum() > 0 and words.grad.abs().sum() > 0
    assert torch.isfinite(regions.grad).all() and torch.isfinite(words.grad).all()
    assert regions.grad[~rmask].abs().sum() == 0  # padded regions get no gradient


def test_rejects_bad_arguments():
    regions, rmask, words, wmask = random_inputs()
    with pytest.raises(ValueError, match="direction"):
        scan_similarity(regions, rmask, words, wmask, direction="both")
    with pytest.raises(TypeError, match="bool"):
        scan_similarity(regions, rmask.float(), words, wmask)
    empty = wmask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="at least one valid token"):
        scan_similarity(regions, rmask, words, empty)
    with pytest.raises(ValueError, match="feature dims"):
        scan_similarity(regions, rmask, words[..., :3], wmask)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("n_reg,n_word", [(6, 8), (10, 4), (4, 10)])  # Gram matrices or attended vectors per pair
def test_pair_scores_equal_all_pairs_scores(direction, n_reg, n_word):
    regions, rmask, words, wmask = random_inputs(seed=5, n_reg=n_reg, n_word=n_word)
    lam = LAMBDAS[direction]
    full = scan_similarity(regions, rmask, words, wmask, direction, "lse", *lam)
    candidates = torch.tensor([[4, 0, 2], [1, 1, 3]])  # two captions (2, 6), each with three images
    by_caption = scan_pair_scores(regions[candidates], rmask[candidates], words[[2, 6], None], wmask[[2, 6], None],
                                  direction, "lse", *lam)
    torch.testing.assert_close(by_caption, full[candidates, torch.tensor([[2], [6]])], atol=1e-6, rtol=1e-6)
    captions = torch.tensor([[0, 5], [6, 3]])  # two images (1, 4), each with two captions
    by_image = scan_pair_scores(regions[[1, 4], None], rmask[[1, 4], None], words[captions], wmask[captions],
                                direction, "lse", *lam)
    torch.testing.assert_close(by_image, full[torch.tensor([[1], [4]]), captions], atol=1e-6, rtol=1e-6)


def test_context_norms_form_attended_vectors_only_for_per_pair_contexts_larger_than_the_query():
    from teacher.attention import context_norms

    per_pair, shared = torch.randn(3, 5, 49, 16), torch.randn(3, 1, 49, 16)
    assert context_norms(per_pair, 15).shape == (3, 5, 49, 16)  # tokens: a Gram per pair would cost more
    assert context_norms(per_pair, 60).shape == (3, 5, 49, 49)
    assert context_norms(shared, 15).shape == (3, 1, 49, 49)  # one Gram per item, shared by its pairs


def test_blocks_cover_every_pair_once_within_budget():
    seen = torch.zeros(23, 41, dtype=torch.int64)
    for im, cp in pair_blocks(23, 41, elements_per_pair=10, max_elements=700):
        assert (im.stop - im.start) * (cp.stop - cp.start) * 10 <= 700
        seen[im, cp] += 1
    assert bool((seen == 1).all())
