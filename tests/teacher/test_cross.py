import numpy as np
import pytest
import torch

from core.config import ConfigError, CrossConfig, ScanConfig, load_config
from core.data.loading import pair_loader
from eval.evaluate import teacher_metrics
from eval.rerank import rerank_sims
from teacher.cross import hard_lists
from teacher.matching import Matcher
from teacher.scoring import candidate_scorer, encode_split, global_sims
from tests.teacher.test_iterative import unit_inputs

CPU = torch.device("cpu")


def matcher(**scan) -> Matcher:
    torch.manual_seed(0)
    return Matcher("cross", ScanConfig(**scan), None, dim=12, cross=CrossConfig(layers=2, heads=3, ff_dim=16)).eval()


def test_pairs_are_scored_one_by_one_in_any_layout_and_block():
    regions, rmask, words, wmask = unit_inputs()
    m = matcher()
    with torch.no_grad():
        one_by_one = torch.stack([torch.cat([m.cross(regions[i, None], rmask[i, None], words[j, None], wmask[j, None])
                                             for j in range(len(words))]) for i in range(len(regions))])
        whole = m.all_pairs(regions, rmask, words, wmask)
        blocked = matcher(max_chunk_elements=64).all_pairs(regions, rmask, words, wmask)  # a pair or two per block
        laid_out = m.pairs(regions[:, None], rmask[:, None], words[None], wmask[None])
    assert whole.shape == (5, 7)
    for scores in (whole, blocked, laid_out):
        torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)


def test_padded_tokens_take_no_part():
    regions, rmask, words, wmask = unit_inputs(seed=1)
    m = matcher()
    noisy_regions = torch.where(rmask[..., None], regions, torch.randn_like(regions) * 50)
    noisy_words = torch.where(wmask[..., None], words, torch.randn_like(words) * 50)
    with torch.no_grad():
        torch.testing.assert_close(m.all_pairs(noisy_regions, rmask, noisy_words, wmask),
                                   m.all_pairs(regions, rmask, words, wmask), atol=1e-5, rtol=1e-5)


def test_hard_lists_put_the_positive_first_then_the_hardest_other_images():
    first = torch.tensor([[0.9, 0.8, 0.1, 0.5],
                          [0.7, 0.6, 0.2, 0.3],
                          [0.0, 0.4, 0.9, 0.6],
                          [0.3, 0.1, 0.8, 0.2]])
    image_index = torch.tensor([0, 0, 1, 2])  # pairs 0 and 1 show the same image
    by_image, by_caption = hard_lists(first, image_index, negatives=2)
    # image of pair 0: its caption 0, then captions of other images by score (3: 0.5, 2: 0.1)
    assert by_image.tolist() == [[0, 3, 2], [1, 3, 2], [2, 3, 1], [3, 2, 0]]
    # caption of pair 2: its image 2, then other images' rows by score in column 2 (3: 0.8, 1: 0.2)
    assert by_caption.tolist() == [[0, 3, 2], [1, 2, 3], [2, 3, 1], [3, 2, 0]]
    # a batch of one image leaves no negative: the slots are -1
    lone, _ = hard_lists(first[:2, :2], image_index[:2], negatives=3)
    assert lone.tolist() == [[0, -1], [1, -1]]


def test_cross_needs_a_global_score_and_heads_that_divide_the_width():
    with pytest.raises(ConfigError, match="needs global_weight > 0"):
        load_config(None, ["teacher.matching=cross", "teacher.global_weight=0"])
    with pytest.raises(ConfigError, match="cross.heads: 5 must divide embed_dim 256"):
        load_config(None, ["teacher.matching=cross", "teacher.cross.heads=5"])


def tiny_cross(text_model_dir, **cross):
    from tests.conftest import build_tiny

    return build_tiny("teacher", text_model_dir, matching="cross",
                      cross={"layers": 1, "heads": 2, "ff_dim": 32, "negatives": 2, **cross},
                      train={"epochs": 1, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "select": "last"})


def test_training_lists_score_the_positive_and_in_batch_negatives(text_model_dir, splits):
    teacher = tiny_cross(text_model_dir)
    loader = pair_loader(splits["train"], teacher.image_tower.preprocess(), teacher.tokenize, 6, batching="random",
                         generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    with torch.no_grad():
        out = teacher(batch)
        images = teacher.encode_images(batch.images)
        captions = teacher.encode_text(batch.input_ids, batch.attention_mask)
        full = teacher.score(images, captions)
    assert out["sims"].shape == (6, 6) and out["lists_i2t"].shape == out["lists_t2i"].shape == (6, 3)
    by_image, by_caption = hard_lists(out["sims"], batch.image_index, 2)
    for b in range(6):  # each list entry is the teacher's full score of that pair
        for slot in range(3):
            if by_image[b, slot] >= 0:
                torch.testing.assert_close(out["lists_i2t"][b, slot], full[b, by_image[b, slot]], atol=1e-5, rtol=1e-5)
            if by_caption[b, slot] >= 0:
                torch.testing.assert_close(out["lists_t2i"][b, slot], full[by_caption[b, slot], b], atol=1e-5, rtol=1e-5)


def test_cross_teacher_trains_saves_reloads_and_evaluates(text_model_dir, splits, tmp_path):
    from core.checkpoint import save_weights
    from distill.loop import Recipe, RunSpec, TrainData, fit
    from distill.models import load_model, save_model_info
    from distill.terms import teacher_objective

    teacher = tiny_cross(text_model_dir)
    objective = teacher_objective(teacher.cfg)
    assert [t.name for t in objective.terms] == ["hinge", "match"]
    before = teacher.matcher.cross.head.weight.detach().clone()
    result = fit(teacher.train(), Recipe(objective), TrainData(splits["train"].head(16), teacher.image_tower.preprocess()),
                 teacher.cfg.train, RunSpec(tmp_path / "fit", 0, CPU, progress=False))
    assert not torch.equal(before, teacher.matcher.cross.head.weight)  # the joint transformer learns
    assert {"hinge", "match"} <= set(result.history[-1]["loss"])
    save_model_info(tmp_path, "teacher", teacher.cfg, str(text_model_dir), None, seed=0)
    save_weights(teacher, tmp_path / "model.safetensors")
    reloaded = load_model(tmp_path)

    split = splits["val"]
    encoded = {name: encode_split(model.eval(), split, model.image_tower.preprocess(), 8, CPU, False)
               for name, model in (("trained", teacher), ("reloaded", reloaded))}
    with torch.no_grad():
        torch.testing.assert_close(reloaded.score(*encoded["reloaded"]), teacher.score(*encoded["trained"]))
    every, how = teacher_metrics(teacher.eval(), *encoded["trained"], split, progress=False)
    assert how == "top-50 of its global score, re-ranked"
    teacher.cfg.cross.eval_top_k = 0
    every, how = teacher_metrics(teacher, *encoded["trained"], split, progress=False)
    assert how == "every pair"
    # re-ranking every candidate of the first stage is scoring every pair (the scores, not the metrics:
    # the pairs are batched differently, and near-ties of a tiny model can swap on the last bit)
    with torch.no_grad():
        full = teacher.score(*encoded["trained"]).numpy()
    i2t, t2i = rerank_sims(global_sims(*encoded["trained"]), candidate_scorer(teacher, *encoded["trained"]), 80)
    np.testing.assert_allclose(i2t, full, atol=1e-5)
    np.testing.assert_allclose(t2i, full, atol=1e-5)
    teacher.cfg.cross.eval_top_k = 2  # a short list keeps the first stage's order below it
    shortlist, how = teacher_metrics(teacher, *encoded["trained"], split, progress=False)
    assert how == "top-2 of its global score, re-ranked" and shortlist != every
