"""`image_tower.fine_tokens`: the trunk's finer grid follows the final tokens, through a trained projection,
while the trunk (and so its cache) stays that of the same tower without fine tokens."""
import pytest
import timm
import torch
from torch import nn

from core.config import ImageTowerConfig, load_config
from core.schema import ConfigError
from core.towers.frozen import trunk_key, weights_fingerprint
from core.towers.image import TimmImageTower, backbone_stages
from tests.conftest import TINY_TOWERS, build_tiny

TINY = TINY_TOWERS["image_tower"]
CUTS = [  # (config, final grid, trunk grid)
    ({"name": "resnet10t", **TINY, "train_top": 2}, 4, 16),  # 2x2 beside the second stage's 4x4 at 32 px
    ({"name": "tf_efficientnet_lite0", "model_kwargs": {}, "image_size": 64, "train_top": 2}, 4, 16),
]


def _tower(settings: dict, fine: bool) -> TimmImageTower:
    torch.manual_seed(0)
    return TimmImageTower(ImageTowerConfig(**{**settings, "freeze": True, "fine_tokens": fine}))


@pytest.mark.parametrize("settings, final, fine", CUTS)
def test_fine_tokens_follow_the_final_ones(settings, final, fine):
    plain, tower = _tower(settings, False).eval(), _tower(settings, True).eval()
    size = settings["image_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, out, cut = plain(x), tower(x), tower.trunk(x)
        staged = tower.top(cut)
    assert out.tokens.shape == (2, final + fine, tower.out_dim) and out.mask.shape == (2, final + fine)
    assert out.mask.all() and cut.tokens.shape[1] == fine
    torch.testing.assert_close(out.tokens[:, :final], expected.tokens)
    torch.testing.assert_close(out.pooled, expected.pooled)  # still the head's pooled final map
    torch.testing.assert_close(out.tokens[:, final:], tower.fine_proj(cut.tokens))
    torch.testing.assert_close(staged.tokens, out.tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(staged.pooled, out.pooled, atol=1e-5, rtol=0)


def test_only_the_top_and_the_fine_projection_train(text_model_dir):
    from core.config import TextTowerConfig
    from core.towers import build_towers

    image, _ = build_towers(ImageTowerConfig(**{**TINY, "freeze": True, "train_top": 1, "fine_tokens": True}),
                            TextTowerConfig(freeze=True), text_model_dir, None, fresh_text=False)
    trained = {id(p) for m in [*image.top_modules(), image.fine_proj] for p in m.parameters()}
    assert all(p.requires_grad == (id(p) in trained) for p in image.parameters())
    image.train()
    assert image.fine_proj.training and not any(m.training for t in image.trunk_modules() for m in t.modules())
    before = image.fine_proj.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in image.parameters() if p.requires_grad], lr=0.1)
    image(torch.randn(2, 3, 32, 32)).tokens.square().mean().backward()
    optimizer.step()
    assert not torch.equal(image.fine_proj.weight, before)
    assert all(p.grad is None for m in image.trunk_modules() for p in m.parameters())


def test_a_fine_tower_shares_the_trunk_cache_key():
    settings = {"name": "resnet10t", **TINY, "train_top": 1}
    plain, fine = _tower(settings, False), _tower(settings, True)
    assert trunk_key(fine) == trunk_key(plain)
    torch.manual_seed(0)  # the key as it was before fine tokens, from the raw backbone cut by hand
    raw = timm.create_model("resnet10t", **TINY["model_kwargs"])
    raw.reset_classifier(0)
    stem, stages, tail = backbone_stages(raw)
    assert trunk_key(plain) == {"weights": weights_fingerprint(nn.ModuleList(stem + stages[:-1])),
                                "top": len(stages[-1:] + tail)}


def test_config_refuses_fine_tokens_without_a_cut():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["teacher.image_tower.freeze=true", "teacher.image_tower.fine_tokens=true"])
    assert any("teacher.image_tower.fine_tokens: needs train_top >= 1" in p for p in info.value.problems)


def test_plan_counts_the_fine_tokens_and_their_projection():
    from distill.plan import model_size

    cut = ["teacher.image_tower.freeze=true", "teacher.image_tower.train_top=1"]
    plain = model_size(cfg := load_config(None, cut), cfg.teacher)
    fine = model_size(cfg := load_config(None, [*cut, "teacher.image_tower.fine_tokens=true"]), cfg.teacher)
    proj = TimmImageTower(cfg.teacher.image_tower).fine_proj
    assert fine.image_tokens == plain.image_tokens + plain.cached_image_tokens
    assert fine.trainable - plain.trainable == sum(p.numel() for p in proj.parameters())
    assert fine.frozen == plain.frozen


def test_teacher_with_fine_tokens_scores_a_batch(text_model_dir, splits):
    from core.data.loading import pair_loader

    teacher = build_tiny("teacher", text_model_dir,
                         image_tower={**TINY, "freeze": True, "train_top": 1, "fine_tokens": True})
    loader = pair_loader(splits["train"], teacher.image_tower.preprocess(), teacher.tokenize, 4,
                         batching="random", generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    with torch.no_grad():
        assert teacher.image_tower(batch.images).tokens.shape[1] == 8  # 2x2 final + 2x2 at the cut
        sims = teacher(batch)["sims"]
    assert sims.shape == (4, 4) and torch.isfinite(sims).all()
