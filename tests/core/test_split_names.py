import pytest

from core.config import ConfigError, load_config
from core.data.split_names import SplitName, parse_split_name, selected


def test_names_parse_with_python_slices():
    assert parse_split_name("train") == SplitName("train")
    assert parse_split_name("train[:-250]") == SplitName("train", slice(None, -250))
    assert parse_split_name("train[10:20]") == SplitName("train", slice(10, 20))
    for bad in ("train[1]", "train[a:]", "[:3]", "train[:3]x"):
        with pytest.raises(ValueError, match="NAME\\[start:stop\\]"):
            parse_split_name(bad)


def test_slices_take_positions_within_their_split():
    entries = ["train", "val", "train", "train", "val", "train"]  # train positions 0..3 at 0, 2, 3, 5
    assert selected(entries, ["train[:-1]"]) == [True, False, True, True, False, False]
    assert selected(entries, ["train[-1:]", "val"]) == [False, True, False, False, True, True]
    assert selected(entries, ["train[:1]", "train"]) == [True, False, True, True, False, True]  # whole wins
    head, tail = selected(entries, ["train[:-2]"]), selected(entries, ["train[-2:]"])
    assert not any(a and b for a, b in zip(head, tail, strict=True)) and sum(head) + sum(tail) == 4


def test_bad_names_fail_config_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {format: karpathy, path: x.json, image_root: x, splits: {val: ['train[1]']}}\n")
    with pytest.raises(ConfigError, match="val: split name 'train\\[1\\]'"):
        load_config(path)
    path.write_text("data: {format: precomputed, path: x, splits: {val: ['train[-5:]']}}\n")
    with pytest.raises(ConfigError, match="need format 'karpathy'"):
        load_config(path)


def test_a_selection_split_is_carved_from_train(synthetic_dir):
    from core.config import Config
    from core.data.karpathy import read_karpathy
    from core.data.synthetic import JSON_NAME
    from core.schema import build
    from distill.plan import split_shapes
    from distill.stages import check_disjoint

    json_path, root = synthetic_dir / JSON_NAME, synthetic_dir / "images"

    def read(names, which):
        return read_karpathy(json_path, root, names, which)

    train, val, test = read(["train[:-8]"], "train"), read(["train[-8:]"], "val"), read(["test"], "test")
    whole = read(["train"], "train")
    assert (train.n_images, val.n_images) == (40, 8)
    assert train.image_paths + val.image_paths == whole.image_paths
    check_disjoint({"train": train, "val": val, "test": test})
    with pytest.raises(ValueError, match="val shares 8 images with train"):
        check_disjoint({"train": whole, "val": val, "test": test})
    cfg = build(Config, {"data": {"format": "karpathy", "path": str(json_path), "image_root": str(root),
                                  "splits": {"train": ["train[:-8]"], "val": ["train[-8:]"], "test": ["test"]}}})
    shapes = split_shapes(cfg)
    assert (shapes["train"].images, shapes["val"].images, shapes["test"].images) == (40, 8, 16)
