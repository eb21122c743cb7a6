import collections
import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from core.config import BackboneConfig, ImageTowerConfig
from core.data.images import ImagePreprocess
from core.towers.frozen import trunk_key
from core.towers.image import RegionFeatureTower, TimmImageTower, load_backbone_weights, normalise_crops
from core.towers.text import TextTower

CNN = ImageTowerConfig(model_kwargs={"channels": [8, 16, 16, 32], "stem_width": 8, "output_stride": 16}, image_size=32)


def test_cnn_tower_gives_grid_tokens_and_pooled_vector():
    tower = TimmImageTower(CNN).eval()
    out = tower(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 4, 32) and out.pooled.shape == (2, 32) and out.mask.all()
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))  # avg-pool head
    pre = tower.preprocess()
    assert pre.size == 32 and pre.resize == 32


@pytest.mark.parametrize("top", [0, 2])
def test_the_tower_normalises_uint8_crops_as_the_preprocessing_does(top):
    """Training ships uint8 crops and the tower normalises them on its device: the same values as
    `ImagePreprocess.normalise`, so the same outputs as the normalised floats evaluation feeds."""
    tower = TimmImageTower(ImageTowerConfig(name="resnet10t", model_kwargs=CNN.model_kwargs, image_size=32,
                                            train_top=top)).eval()
    crops = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    pre = tower.preprocess()
    floats = torch.from_numpy(np.stack([pre.normalise(c) for c in crops.numpy()]))
    assert torch.equal(normalise_crops(crops, tower.pixel_table), floats)
    assert torch.equal(tower(crops).tokens, tower(floats).tokens)
    assert torch.equal(tower.trunk(crops).tokens, tower.trunk(floats).tokens)
    assert "pixel_table" not in tower.state_dict()  # follows from the preprocessing; checkpoints unchanged


def test_further_backbones_append_their_grids_and_pooled_vectors():
    """`also`: each further backbone sees the pixels in its own normalisation (here ImageNet's under
    Lite0's 0.5/0.5), its 4x4 grid is averaged onto the tower's 2x2, and its channels follow."""
    main = {"name": "tf_efficientnet_lite0", "model_kwargs": {}, "image_size": 64}
    tower = TimmImageTower(ImageTowerConfig(**main, also=[BackboneConfig("resnet10t", model_kwargs=CNN.model_kwargs)]))
    tower.eval()
    alone = TimmImageTower(ImageTowerConfig(**main)).eval()
    alone.model.load_state_dict(tower.model.state_dict())
    crops = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    theirs = ImagePreprocess(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        out, own = tower(crops), alone(crops)
        feats = tower.also[0].forward_features(torch.from_numpy(np.stack([theirs.normalise(c) for c in crops.numpy()])))
    assert tower.out_dim == 1280 + 32 and out.tokens.shape == (2, 4, 1312) and out.mask.all()
    torch.testing.assert_close(out.tokens[..., :1280], own.tokens)
    torch.testing.assert_close(out.pooled[:, :1280], own.pooled)
    assert feats.shape[-2:] == (4, 4)
    torch.testing.assert_close(out.tokens[..., 1280:], F.adaptive_avg_pool2d(feats, 2).flatten(2).transpose(1, 2),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled[:, 1280:], feats.mean((2, 3)), atol=1e-4, rtol=1e-4)


def test_backbones_keep_channels_last_weights_with_the_same_outputs_and_cache_key():
    """Convolution weights are channels-last (faster on a CPU for the (B, H, W, 3) crops training ships);
    the outputs and the frozen-cache key are those of the usual layout, so no cache is invalidated. The
    outputs (up to 6, ReLU6) differ by float32 summation order only: about 1e-5 over six seeds' weights."""
    torch.manual_seed(0)
    tower = TimmImageTower(ImageTowerConfig(name="tf_efficientnet_lite0", model_kwargs={}, image_size=64,
                                            also=[BackboneConfig("resnet10t", model_kwargs=CNN.model_kwargs)])).eval()
    plain = copy.deepcopy(tower).to(memory_format=torch.contiguous_format)
    spatial = [(a.weight, b.weight) for a, b in zip(tower.modules(), plain.modules(), strict=True)
               if isinstance(a, nn.Conv2d) and a.weight.shape[-1] > 1 and a.weight.shape[1] > 1]
    assert spatial and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w, _ in spatial)  # both backbones, not only the main one
    assert all(p.is_contiguous() for _, p in spatial)
    crops = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(tower(crops).tokens, plain(crops).tokens, atol=1e-4, rtol=1e-4)
    assert trunk_key(tower) == trunk_key(plain)


def test_further_backbones_need_a_whole_timm_tower():
    from core.config import Config
    from core.schema import ConfigError, build

    with pytest.raises(ConfigError, match="also: further backbones need kind: timm and train_top: 0"):
        build(Config, {"student": {"image_tower": {"freeze": True, "train_top": 1, "also": [{"name": "resnet10t"}]}}})


def test_vit_tower_drops_prefix_tokens():
    tower = TimmImageTower(ImageTowerConfig(name="test_vit", model_kwargs={"img_size": 32, "patch_size": 8}, image_size=None))
    out = tower.eval()(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape[:2] == (2, 16) and tower.preprocess().size == 32


def test_local_weights_by_name_and_by_order(tmp_path):
    src = timm.create_model("resnet10t", **CNN.model_kwargs)
    torch.nn.init.constant_(src.conv1[0].weight, 0.5)
    by_name = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(by_name))
    tower = TimmImageTower(ImageTowerConfig(**{**CNN.__dict__, "weights": str(by_name)}))
    assert torch.all(tower.model.conv1[0].weight == 0.5)
    # same tensors under other names, in order (like lukemelas EfficientNet vs timm): mapped by order
    renamed = collections.OrderedDict((f"other.{i}", v) for i, v in enumerate(src.state_dict().values()))
    by_order = tmp_path / "w.pth"
    torch.save(renamed, by_order)
    model = timm.create_model("resnet10t", **CNN.model_kwargs)
    load_backbone_weights(model, by_order)
    assert torch.all(model.conv1[0].weight == 0.5)
    renamed.popitem()
    torch.save(renamed, by_order)
    with pytest.raises(ValueError, match="cannot map"):
        load_backbone_weights(timm.create_model("resnet10t", **CNN.model_kwargs), by_order)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="refused or unreadable"):
        load_backbone_weights(timm.create_model("resnet10t", **CNN.model_kwargs), path)


def test_region_feature_tower_masked_mean():
    regions = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    out = RegionFeatureTower(2)(regions, mask)
    torch.testing.assert_close(out.pooled, torch.tensor([[2.0, 3.0]]))


def test_text_tower_tokens_and_sentence_transformers_pooling(text_model_dir):
    from sentence_transformers import SentenceTransformer

    tower = TextTower(str(text_model_dir), max_length=24).eval()
    texts = ["a red circle left of a blue square", "a tiny box"]
    tokens = tower.tokenize(texts)
    out = tower(tokens["input_ids"], tokens["attention_mask"])
    assert out.tokens.shape[:2] == tokens["input_ids"].shape and out.mask.tolist() == tokens["attention_mask"].bool().tolist()
    st = SentenceTransformer(str(text_model_dir), device="cpu")
    torch.testing.assert_close(out.pooled, st.encode(texts, convert_to_tensor=True, normalize_embeddings=False),
                               atol=1e-5, rtol=1e-4)


def test_text_tower_truncates_and_fresh_init_differs(text_model_dir):
    tower = TextTower(str(text_model_dir), max_length=6)
    assert tower.tokenize(["one two three four five six seven eight"])["input_ids"].shape[1] == 6
    torch.manual_seed(1)
    a = TextTower(str(text_model_dir), 24, fresh_init=True)
    torch.manual_seed(2)
    b = TextTower(str(text_model_dir), 24, fresh_init=True)
    pa, pb = next(a.encoder.parameters()), next(b.encoder.parameters())
    assert not torch.equal(pa, pb)


@pytest.mark.parametrize("name, kwargs, top", [
    ("resnet10t", CNN.model_kwargs, 2),
    ("tf_efficientnet_lite0", {}, 1),
    ("tf_efficientnet_lite0", {}, 3),
])
def test_cut_image_tower_equals_the_whole_one(name, kwargs, top):
    whole = TimmImageTower(ImageTowerConfig(name=name, model_kwargs=kwargs, image_size=32)).eval()
    cut = TimmImageTower(ImageTowerConfig(name=name, model_kwargs=kwargs, image_size=32, freeze=True, train_top=top))
    cut.load_state_dict(whole.state_dict())
    cut.eval()
    x = torch.randn(2, 3, 32, 32)
    expected, trunk = whole(x), cut.trunk(x)
    assert trunk.tokens.shape[-1] != expected.tokens.shape[-1] or trunk.tokens.shape[1] != expected.tokens.shape[1]
    for got in (cut.top(trunk), cut(x)):
        torch.testing.assert_close(got.tokens, expected.tokens)
        torch.testing.assert_close(got.pooled, expected.pooled)
    assert {id(p) for m in cut.top_modules() for p in m.parameters()}.isdisjoint(
        {id(p) for m in cut.trunk_modules() for p in m.parameters()})


def test_image_tower_cut_is_checked():
    with pytest.raises(ValueError, match="has 4 stages, got 5"):
        TimmImageTower(ImageTowerConfig(**{**CNN.__dict__, "freeze": True, "train_top": 5}))
    with pytest.raises(ValueError, match="cannot cut timm model VisionTransformer"):
        TimmImageTower(ImageTowerConfig(name="test_vit", model_kwargs={"img_size": 32, "patch_size": 8},
                                        freeze=True, train_top=1))


def test_cut_text_tower_equals_the_whole_one(text_model_dir):
    whole = TextTower(str(text_model_dir), max_length=24).eval()
    cut = TextTower(str(text_model_dir), max_length=24, train_top=1).eval()
    cut.load_state_dict(whole.state_dict())
    enc = whole.tokenize(["a red cube left of a blue ball", "two dogs"])
    expected = whole(enc["input_ids"], enc["attention_mask"])
    trunk = cut.trunk(enc["input_ids"], enc["attention_mask"])
    assert not torch.allclose(trunk.tokens, expected.tokens)
    widths = []
    cut.top_modules()[0].register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    for got in (cut.top(trunk), cut(enc["input_ids"], enc["attention_mask"])):
        valid = expected.mask
        torch.testing.assert_close(got.tokens[valid], expected.tokens[valid], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.pooled, expected.pooled, atol=1e-5, rtol=1e-4)
    # over a cached trunk the short caption runs in its own group, trimmed to its length; the whole
    # tower (what the export traces) runs the padded batch in one pass
    full, short = expected.mask.shape[1], int(expected.mask[1].sum())
    assert sorted(widths) == [short, full, full]
    assert not cut.top(trunk).tokens[~expected.mask].any()
    with pytest.raises(ValueError, match="layers, got 3"):
        TextTower(str(text_model_dir), max_length=24, train_top=3)


def test_frozen_towers_train_only_their_top(text_model_dir):
    from core.config import TextTowerConfig
    from core.towers import build_towers

    image, text = build_towers(ImageTowerConfig(**{**CNN.__dict__, "freeze": True, "train_top": 1}),
                               TextTowerConfig(freeze=True, train_top=1), text_model_dir, None, fresh_text=False)
    for tower in (image, text):
        top = {id(p) for m in tower.top_modules() for p in m.parameters()}
        assert top and all(p.requires_grad == (id(p) in top) for p in tower.parameters())
        tower.train()
        assert all(m.training for m in tower.top_modules())
        assert not any(sub.training for m in tower.trunk_modules() for sub in m.modules())
