import json

import numpy as np
import pytest

from core.data.precomputed import read_precomputed
from core.data.synthetic_features import ATTRIBUTES, NOUNS, concept_directions, generate_features, main

SPLITS = ("train", "val", "test")


def _files(root):
    return {name: (root / name).read_bytes() for s in SPLITS for name in (f"{s}_ims.npy", f"{s}_caps.txt")}


def test_layout_and_reader(tmp_path):
    summary = generate_features(tmp_path, 10, 3, 4, regions=6, dim=16, seed=1, block_images=4)
    for split, n in zip(SPLITS, (10, 3, 4), strict=True):
        feats = np.load(tmp_path / f"{split}_ims.npy")
        assert feats.shape == (n, 6, 16) and feats.dtype == np.float32 and np.isfinite(feats).all()
        lines = (tmp_path / f"{split}_caps.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 5 * n and all(lines)
        for i in range(n):
            assert len(set(lines[5 * i: 5 * i + 5])) == 5  # differently worded
        assert summary["splits"][split]["images"] == n and summary["splits"][split]["captions"] == 5 * n
    assert summary["bytes"] == sum(len(b) for b in _files(tmp_path).values())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    train = read_precomputed(tmp_path, ["train"], "train")
    assert train.n_images == 10 and train.features.shape == (10, 6, 16)


def test_deterministic_by_seed_whatever_reruns(tmp_path):
    generate_features(tmp_path / "a", 9, 2, 2, regions=5, dim=8, seed=3, block_images=4)
    generate_features(tmp_path / "b", 9, 2, 2, regions=5, dim=8, seed=3, block_images=4)
    generate_features(tmp_path / "c", 9, 2, 2, regions=5, dim=8, seed=4, block_images=4)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b
    assert all(a[name] != c[name] for name in a)
    assert len(set(a["train_caps.txt"].decode().split("\n"))) > 20  # images differ


def test_rejects_empty_split(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        generate_features(tmp_path, 4, 0, 1)


def test_cli_prints_summary(tmp_path, capsys):
    assert main([str(tmp_path), "--train", "3", "--val", "1", "--test", "1", "--regions", "4", "--dim", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["images"] == 3 and (tmp_path / "test_caps.txt").is_file()


def _bag_of_concepts_r1(feats: np.ndarray, captions: list[str], seed: int) -> float:
    """Caption-to-image R@1 of a score that sums, over the caption's nouns and attributes, the best
    region's projection on the concept's direction."""
    noun_dirs, attr_dirs, _ = concept_directions(seed, feats.shape[-1])
    index = {w: noun_dirs[i] for i, w in enumerate(NOUNS)}
    index.update({w: attr_dirs[i] for i, words in enumerate(ATTRIBUTES) for w in words})
    hits = 0
    for c, caption in enumerate(captions):
        words = np.stack([index[w] for w in caption.split() if w in index])
        scores = (feats @ words.T).max(axis=1).sum(axis=1)  # (images,)
        hits += int(np.argmax(scores) == c // 5)
    return hits / len(captions)


def test_words_ground_in_regions(tmp_path):
    generate_features(tmp_path, 200, 1, 1, regions=8, dim=64, seed=5)
    feats = np.load(tmp_path / "train_ims.npy")
    captions = (tmp_path / "train_caps.txt").read_text().splitlines()
    r1 = _bag_of_concepts_r1(feats, captions, seed=5)
    assert r1 > 0.3  # chance is 1/200
    assert _bag_of_concepts_r1(feats, captions, seed=6) < 0.05  # another seed's directions carry no signal


def test_named_nouns_have_regions_of_their_own(tmp_path):
    generate_features(tmp_path, 50, 1, 1, regions=12, dim=256, seed=2)
    feats = np.load(tmp_path / "train_ims.npy")
    captions = (tmp_path / "train_caps.txt").read_text().splitlines()
    best = (feats @ concept_directions(2, 256)[0].T).max(axis=1)  # (images, nouns): the best region's projection
    named = np.zeros_like(best, dtype=bool)
    for c, caption in enumerate(captions):
        named[c // 5, [NOUNS.index(w) for w in caption.split() if w in NOUNS]] = True
    assert best[named].mean() > best[~named].mean() + 1.5  # unit noise: a named noun's regions carry ~3 on it
