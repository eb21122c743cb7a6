import torch

from core.data.loading import pair_loader
from teacher.scoring import encode_split, score_all


def test_forward_scores_every_pair_in_the_batch(tiny_teacher, splits):
    loader = pair_loader(splits["train"], tiny_teacher.image_tower.preprocess(), tiny_teacher.tokenize, 6,
                         batching="random", generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    sims = tiny_teacher(batch)["sims"]
    assert sims.shape == (6, 6) and torch.isfinite(sims).all()


def test_split_scores_equal_batch_scores(tiny_teacher, splits):
    split = splits["val"]
    images, captions = encode_split(tiny_teacher, split, tiny_teacher.image_tower.preprocess(), 5, torch.device("cpu"), False)
    assert images.tokens.shape[0] == 16 and captions.tokens.shape[0] == 80
    blocks_of_3 = 3 * 2 * images.tokens[0].numel() * 4 / 2**30  # three images (and fewer captions) per block
    scores = score_all(tiny_teacher, images, captions, block_gib=blocks_of_3, progress=False)
    assert scores.shape == (16, 80)
    # captions encoded one at a time (no padding from other captions) give the same scores
    tokens = tiny_teacher.tokenize([split.captions[7]])
    with torch.no_grad():
        one = tiny_teacher.score(images, tiny_teacher.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    torch.testing.assert_close(torch.from_numpy(scores[:, 7]), one[:, 0], atol=1e-5, rtol=1e-5)


def test_global_term_adds_weighted_cosine(tiny_teacher, splits):
    split = splits["val"]
    images, captions = encode_split(tiny_teacher, split, tiny_teacher.image_tower.preprocess(), 8, torch.device("cpu"), False)
    with torch.no_grad():
        full = tiny_teacher.score(images, captions)
        tiny_teacher.cfg.global_weight, saved = 0.0, tiny_teacher.cfg.global_weight
        scan_only = tiny_teacher.score(images, captions)
        tiny_teacher.cfg.global_weight = saved
    torch.testing.assert_close(full - scan_only, saved * images.pooled @ captions.pooled.T, atol=1e-5, rtol=1e-5)


def test_candidate_scores_equal_all_pairs_scores(tiny_teacher, splits):
    images, captions = encode_split(tiny_teacher, splits["val"], tiny_teacher.image_tower.preprocess(), 8,
                                    torch.device("cpu"), False)
    with torch.no_grad():
        full = tiny_teacher.score(images, captions)
        caps = torch.tensor([3, 40, 79])
        imgs = torch.tensor([[0, 5, 15], [2, 2, 9], [1, 14, 7]])
        by_text = tiny_teacher.score_candidates(images, captions, "text", caps, imgs)
        by_image = tiny_teacher.score_candidates(images, captions, "image", imgs[:, 0], caps[None].repeat(3, 1))
    torch.testing.assert_close(by_text, full[imgs, caps[:, None]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_image, full[imgs[:, :1], caps[None]], atol=1e-5, rtol=1e-5)


def test_imram_teacher_trains_saves_and_reloads(text_model_dir, splits, tmp_path):
    from core.checkpoint import save_weights
    from distill.loop import Recipe, RunSpec, TrainData, fit
    from distill.models import load_model, save_model_info
    from distill.terms import teacher_objective
    from tests.conftest import build_tiny

    teacher = build_tiny("teacher", text_model_dir, matching="imram", imram={"steps": 2, "side": "full"},
                         train={"epochs": 1, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "select": "last"})
    before = teacher.matcher.text_memory.gate.weight.detach().clone()
    fit(teacher.train(), Recipe(teacher_objective(teacher.cfg)),
        TrainData(splits["train"].head(16), teacher.image_tower.preprocess()), teacher.cfg.train,
        RunSpec(tmp_path / "fit", 0, torch.device("cpu"), progress=False))
    assert not torch.equal(before, teacher.matcher.text_memory.gate.weight)  # the memory units learn
    save_model_info(tmp_path, "teacher", teacher.cfg, str(text_model_dir), None, seed=0)
    save_weights(teacher, tmp_path / "model.safetensors")

    def scores(model):
        images, captions = encode_split(model.eval(), splits["val"], model.image_tower.preprocess(), 8,
                                        torch.device("cpu"), False)
        with torch.no_grad():
            return model.score(images[:4], captions[:9])

    torch.testing.assert_close(scores(load_model(tmp_path)), scores(teacher))
