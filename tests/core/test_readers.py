import json

import numpy as np
import pytest
from PIL import Image

from core.data.karpathy import read_karpathy
from core.data.precomputed import read_precomputed


def write_dataset(root, entries):
    (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
    for e in entries:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "images" / e.get("filepath", "") / e["filename"])
    path = root / "data.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def entry(name, split="train", n=5, filepath=""):
    return {"filename": name, "filepath": filepath, "split": split,
            "sentences": [{"raw": f"caption {i} of {name} "} for i in range(n)]}


def test_reads_splits_coco_filepath_and_first_k_captions(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg"), entry("b.jpg", "restval", n=7, filepath="sub"), entry("c.jpg", "test")])
    split = read_karpathy(path, tmp_path / "images", ["train", "restval"], "train")
    assert split.n_images == 2 and split.n_captions == 10
    assert split.image_paths[1].name == "b.jpg" and split.image_paths[1].parent.name == "sub"
    assert split.captions[5] == "caption 0 of b.jpg" and split.captions[9] == "caption 4 of b.jpg"
    assert split.caption_image.tolist() == [0] * 5 + [1] * 5


def test_fingerprint_changes_with_captions(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg")])
    fp = read_karpathy(path, tmp_path / "images", ["train"], "train").fingerprint()
    data = json.loads(path.read_text())
    data["images"][0]["sentences"][0]["raw"] = "changed"
    path.write_text(json.dumps(data))
    assert read_karpathy(path, tmp_path / "images", ["train"], "train").fingerprint() != fp


@pytest.mark.parametrize("mutate,message", [
    (lambda es: es[0].update(sentences=[{"raw": "one"}]), "has 1 non-empty captions"),
    (lambda es: es[0].update(filename="missing.jpg"), "image file not found"),
    (lambda es: es[0].update(filename="../../outside.jpg"), "outside the image root"),
    (lambda es: es[0].pop("split"), "missing 'split'"),
    (lambda es: es[0].pop("filename"), "missing 'filename'"),
])
def test_bad_entries_name_the_file_and_entry(tmp_path, mutate, message):
    entries = [entry("a.jpg"), entry("b.jpg")]
    path = write_dataset(tmp_path, entries)
    mutate(entries)
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        read_karpathy(path, tmp_path / "images", ["train"], "train")
    assert str(path) in str(info.value) and "images[0]" in str(info.value)


def test_unknown_split_lists_the_present_ones(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg")])
    with pytest.raises(ValueError, match=r"splits present: \['train'\]"):
        read_karpathy(path, tmp_path / "images", ["test"], "test")


def test_malformed_json(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("{not json")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="not valid JSON"):
        read_karpathy(path, tmp_path / "images", ["train"], "train")
    path.write_text("[]")
    with pytest.raises(ValueError, match="'images' list"):
        read_karpathy(path, tmp_path / "images", ["train"], "train")


def write_precomputed(root, split, n_img, k=5, rows=None, dim=6):
    np.save(root / f"{split}_ims.npy", np.random.default_rng(0).normal(size=(rows or n_img, 4, dim)).astype(np.float32))
    (root / f"{split}_caps.txt").write_text("".join(f"caption {i}\n" for i in range(n_img * k)))


def test_precomputed_features(tmp_path):
    write_precomputed(tmp_path, "train", 3)
    split = read_precomputed(tmp_path, ["train", "restval"], "train")
    assert split.features.shape == (3, 4, 6) and split.n_captions == 15 and split.image_paths is None
    write_precomputed(tmp_path, "dev", 2, rows=10)  # one feature row per caption (VSE++ layout)
    assert read_precomputed(tmp_path, ["dev"], "val").features.shape == (2, 4, 6)


def test_precomputed_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_ims.npy"):
        read_precomputed(tmp_path, ["train"], "train")
    write_precomputed(tmp_path, "train", 3)
    (tmp_path / "train_caps.txt").write_text("only\ntwo\n")
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        read_precomputed(tmp_path, ["train"], "train")
    np.save(tmp_path / "test_ims.npy", np.zeros((2, 3)))
    (tmp_path / "test_caps.txt").write_text("x\n" * 10)
    with pytest.raises(ValueError, match="expected \\(images, regions, dim\\)"):
        read_precomputed(tmp_path, ["test"], "test")
