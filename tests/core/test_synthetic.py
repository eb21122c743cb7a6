import collections
import json

import numpy as np

from core.data.synthetic import (
    COLOURS,
    JSON_NAME,
    RELATION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SceneObject,
    captions_for,
    generate,
    make_family,
    relation,
)


def test_same_seed_writes_identical_files(tmp_path):
    a = generate(tmp_path / "a", 8, 4, 4, image_size=32, seed=3)
    b = generate(tmp_path / "b", 8, 4, 4, image_size=32, seed=3)
    c = generate(tmp_path / "c", 8, 4, 4, image_size=32, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    for name in ("train_00000.png", "test_00003.png"):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()


def test_karpathy_layout(synthetic_dir):
    data = json.loads((synthetic_dir / JSON_NAME).read_text())
    splits = collections.Counter(e["split"] for e in data["images"])
    assert splits == {"train": 48, "val": 16, "test": 16}
    for entry in data["images"]:
        assert (synthetic_dir / "images" / entry["filename"]).is_file()
        assert len(entry["sentences"]) == 5 and len({s["raw"] for s in entry["sentences"]}) >= 4
        assert 2 <= len(entry["scene"]) <= 3


def test_relations():
    left = SceneObject("circle", "red", "small", (1, 0))
    right = SceneObject("square", "blue", "large", (1, 2))
    above = SceneObject("triangle", "green", "small", (0, 2))
    assert relation(left, right) == "left" and relation(right, left) == "right"
    assert relation(above, right) == "above" and relation(right, above) == "below"


def test_captions_state_true_bound_facts():
    rng = np.random.default_rng(0)
    scene = [SceneObject("circle", "red", "small", (1, 0)), SceneObject("square", "blue", "large", (1, 2))]
    for _ in range(20):
        for caption in captions_for(rng, scene)[:4]:
            words = caption.split()
            red = next(i for i, w in enumerate(words) if w == "red")
            blue = next(i for i, w in enumerate(words) if w == "blue")
            assert words[red + 1] in SHAPE_WORDS["circle"] and words[blue + 1] in SHAPE_WORDS["square"]
            first, second = ("red", "blue") if red < blue else ("blue", "red")
            truth = "left" if first == "red" else "right"
            assert any(phrase in caption for phrase in RELATION_WORDS[truth]), caption
            assert not any(phrase in caption for phrase in RELATION_WORDS["right" if truth == "left" else "left"])


def test_family_members_share_every_attribute_word_but_differ():
    rng = np.random.default_rng(1)
    for _ in range(30):
        family = make_family(rng, 4, 2, 3)
        assert len({frozenset(s) for s in family}) == 4
        bags = {tuple(sorted(collections.Counter(v for o in s for v in (o.shape, o.colour, o.size)).items())) for s in family}
        assert len(bags) == 1  # a bag-of-words model cannot tell the members apart


def test_vocabulary_is_closed():
    known = set(COLOURS) | {w for ws in SHAPE_WORDS.values() for w in ws} | {w for ws in SIZE_WORDS.values() for w in ws}
    known |= {w for ws in RELATION_WORDS.values() for p in ws for w in p.split()}
    known |= {"a", "the", "is", "there", "sits", "from", "left", "to", "right", "are", "and"}
    rng = np.random.default_rng(2)
    for _ in range(20):
        for caption in captions_for(rng, make_family(rng, 2, 2, 3)[0]):
            assert set(caption.replace(",", "").replace(":", "").split()) <= known, caption
