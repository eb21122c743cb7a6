"""Property-based tests of the dataset readers: what they keep, what they report, what they raise."""
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from core.data.karpathy import BadDataError, read_karpathy
from core.data.precomputed import read_precomputed
from core.data.records import CaptionSplit

SPLITS = ["train", "val", "test", "restval"]
GOOD = [f"img{i}.png" for i in range(5)]
PROBLEMS = {"missing": "nowhere.png", "corrupt": "corrupt.jpg", "outside": "../outside.png"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """An image root with a few good images and a corrupt one, shared by every example."""
    root = tmp_path_factory.mktemp("pool")
    (root / "images").mkdir()
    for i, name in enumerate(GOOD):
        Image.new("RGB", (4, 4), (i, i, i)).save(root / "images" / name)
    (root / "images" / "corrupt.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (4, 4)).save(root / "outside.png")
    return root


caption = st.text(max_size=12).filter(str.strip)
blank = st.sampled_from(["", " ", "\t", "\n "])


@st.composite
def karpathy_entry(draw, k: int) -> tuple[dict, str | None, list[str]]:
    """An entry, its problem (None: good) and the captions a reader must keep for it."""
    problem = draw(st.sampled_from([None, None, None, "missing", "corrupt", "outside", "few", "non-string"]))
    filename = PROBLEMS.get(problem) or draw(st.sampled_from(GOOD))
    texts = draw(st.lists(caption, min_size=0 if problem == "few" else k, max_size=k - 1 if problem == "few" else k + 2))
    raws: list = list(texts)
    for position, text in draw(st.lists(st.tuples(st.integers(0, 8), blank), max_size=3)):
        raws.insert(min(position, len(raws)), text)  # blank captions count as missing, wherever they are
    if problem == "non-string":
        raws.insert(draw(st.integers(0, len(raws))), draw(st.one_of(st.none(), st.integers(), st.lists(st.integers()))))
    entry = {"filename": filename, "split": draw(st.sampled_from(SPLITS)), "sentences": [{"raw": r} for r in raws]}
    return entry, problem, [t.strip() for t in texts[:k]]


@st.composite
def karpathy_dataset(draw) -> tuple[int, list]:
    k = draw(st.integers(1, 3))
    return k, draw(st.lists(karpathy_entry(k), min_size=1, max_size=8))


@settings(max_examples=80, deadline=None)
@given(dataset=karpathy_dataset(), wanted=st.sets(st.sampled_from(SPLITS), min_size=1), skip_bad=st.booleans())
def test_karpathy_keeps_exactly_the_good_entries_of_the_requested_splits(pool, dataset, wanted, skip_bad):
    k, entries = dataset
    path = pool / "data.json"
    path.write_text(json.dumps({"images": [e for e, _, _ in entries]}))
    chosen = [(i, e, problem, kept) for i, (e, problem, kept) in enumerate(entries) if e["split"] in wanted]
    bad = [i for i, _, problem, _ in chosen if problem]
    good = [(e["filename"], kept) for _, e, problem, kept in chosen if not problem]
    def read():
        return read_karpathy(path, pool / "images", sorted(wanted), "x", k, skip_bad=skip_bad)
    if not chosen:
        with pytest.raises(ValueError, match="no images in split"):
            read()
    elif bad and not skip_bad:
        with pytest.raises(BadDataError) as info:
            read()
        assert [b.index for b in info.value.bad] == bad
    elif not good:
        with pytest.raises(ValueError, match="are bad"):
            read()
    else:
        split = read()
        assert [p.name for p in split.image_paths] == [name for name, _ in good]
        assert split.captions == tuple(c for _, kept in good for c in kept)
        assert [b.index for b in split.skipped] == bad


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12)
name_like = st.sampled_from(GOOD + ["corrupt.jpg", "", ".", "..", "../outside.png", "/etc/hostname", "a\0b", "x" * 300])
entry_like = st.fixed_dictionaries({}, optional={
    "split": st.sampled_from(SPLITS) | json_value,
    "filename": name_like | json_value,
    "filepath": st.sampled_from(["", "..", "sub"]) | json_value,
    "sentences": st.lists(st.fixed_dictionaries({}, optional={"raw": caption | json_value}) | json_value, max_size=4)
    | json_value,
})
plausible_entry = st.fixed_dictionaries({
    "split": st.sampled_from(SPLITS), "filename": name_like,
    "sentences": st.lists(st.fixed_dictionaries({"raw": caption}), min_size=1, max_size=2)})
garbage = st.one_of(
    st.binary(max_size=40),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.lists(plausible_entry | entry_like | json_value, max_size=5).map(lambda es: json.dumps({"images": es}).encode()),
    st.lists(entry_like, min_size=1, max_size=5).map(lambda es: json.dumps({"images": es}).encode()[:-3]),  # cut short
)


@settings(max_examples=150, deadline=None)
@given(content=garbage, skip_bad=st.booleans())
def test_karpathy_garbage_gives_a_split_or_a_value_error_naming_the_file(pool, content, skip_bad):
    path = pool / "garbage.json"
    path.write_bytes(content)
    try:
        split = read_karpathy(path, pool / "images", ["train"], "train", 1, skip_bad=skip_bad)
    except ValueError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        assert isinstance(split, CaptionSplit) and split.n_images >= 1
        assert all(p.parent == (pool / "images").resolve() and p.name in GOOD for p in split.image_paths)


# Lone surrogates (category Cs) cannot be written as UTF-8, so no caption file can hold them.
caption_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                       min_size=1, max_size=12).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), k=st.integers(1, 3), regions=st.integers(1, 3), dim=st.integers(1, 4),
       per_caption=st.booleans(), data=st.data())
def test_precomputed_features_and_captions_round_trip(n, k, regions, dim, per_caption, data):
    feats = data.draw(arrays(np.float32, (n, regions, dim), elements=st.floats(-1e3, 1e3, width=32)))
    captions = data.draw(st.lists(caption_line, min_size=n * k, max_size=n * k))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "test_ims.npy", np.repeat(feats, k, axis=0) if per_caption else feats)
        (Path(tmp) / "test_caps.txt").write_text("".join(c + "\n" for c in captions), encoding="utf-8")
        split = read_precomputed(tmp, ["test"], "test", k)
        np.testing.assert_array_equal(split.features, feats)
    assert split.captions == tuple(c.strip() for c in captions) and split.caption_image.tolist() == [
        j // k for j in range(n * k)]
