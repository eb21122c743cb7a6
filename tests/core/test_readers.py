import json

import numpy as np
import pytest
from PIL import Image

from core.data import precomputed
from core.data.karpathy import SHOWN, BadDataError, read_karpathy
from core.data.precomputed import read_precomputed
from tests.core.test_images import BAD_FILES, ODD_MODES


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


BAD_ENTRIES = {
    "too few captions": (lambda e: e.update(sentences=[{"raw": "one"}]), "has 1 non-empty captions, 5 are required"),
    "empty captions": (lambda e: e.update(sentences=[{"raw": r} for r in ("a", " ", "", "b", "c")]),
                       "has 3 non-empty captions, 5 are required"),
    "non-string caption": (lambda e: e["sentences"].append({"raw": 7}), "sentences\\[5\\] has no string 'raw'"),
    "sentence not an object": (lambda e: e["sentences"].insert(0, "a dog"), "sentences\\[0\\] has no string 'raw'"),
    "no sentences": (lambda e: e.pop("sentences"), "missing 'sentences' list"),
    "missing file": (lambda e: e.update(filename="missing.jpg"), "image file not found"),
    "outside the root": (lambda e: e.update(filename="../../outside.jpg"), "outside the image root"),
    "absolute path": (lambda e: e.update(filename="/etc/hostname"), "outside the image root"),
    "no split": (lambda e: e.pop("split"), "missing 'split'"),
    "no filename": (lambda e: e.pop("filename"), "missing 'filename'"),
    "filepath not a string": (lambda e: e.update(filepath=3), "not a valid path"),
}


def read(path, **kwargs):
    return read_karpathy(path, path.parent / "images", ["train"], "train", **kwargs)


@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
def test_bad_entries_name_the_file_the_entry_and_the_problem(tmp_path, kind):
    mutate, message = BAD_ENTRIES[kind]
    entries = [entry("a.jpg"), entry("b.jpg")]
    path = write_dataset(tmp_path, entries)
    mutate(entries[0])
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises(BadDataError, match=message) as info:
        read(path)
    assert str(path) in str(info.value) and "images[0]" in str(info.value) and "1 bad image entry" in str(info.value)
    assert [b.index for b in info.value.bad] == [0]


def test_an_entry_that_is_not_an_object(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg")])
    path.write_text(json.dumps({"images": [entry("a.jpg"), ["b.jpg"]]}))
    with pytest.raises(BadDataError, match=r"images\[1\] \(\?\): expected an object"):
        read(path)


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_image_files_fail_before_training(tmp_path, kind):
    make, message = BAD_FILES[kind]
    bad = make(tmp_path)
    path = write_dataset(tmp_path, [entry("a.jpg"), entry(bad.name)])
    bad = bad.replace(tmp_path / "images" / bad.name)  # over the good image write_dataset made
    with pytest.raises(BadDataError, match=message) as info:
        read(path)
    assert f"images[1] ({bad.name}): {bad.resolve()}: cannot read image" in str(info.value)


def test_huge_images_fail_before_training(tmp_path, monkeypatch):
    path = write_dataset(tmp_path, [entry("a.jpg"), entry("b.jpg")])
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "b.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 8x8 passes, 16x16 is a bomb
    with pytest.raises(BadDataError, match=r"images\[1\] \(b.jpg\): .*b.jpg: image too large"):
        read(path)


def test_grey_palette_cmyk_and_16_bit_images_are_good(tmp_path):
    names = [name for _, name, _ in ODD_MODES.values()]
    path = write_dataset(tmp_path, [entry(name) for name in names])
    for image, name, _ in ODD_MODES.values():
        image.save(tmp_path / "images" / name)
    assert read(path).n_images == len(names)


def test_one_error_lists_the_first_problems_and_counts_the_rest(tmp_path):
    entries = [entry(f"{i}.jpg") for i in range(SHOWN + 3)]
    path = write_dataset(tmp_path, entries)
    for e in entries[1:]:
        e["filename"] = "gone-" + e["filename"]
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises(BadDataError) as info:
        read(path)
    message = str(info.value)
    assert f"{SHOWN + 2} bad image entries" in message and "... and 2 more" in message
    assert message.count("image file not found") == SHOWN and "images[1] (gone-1.jpg)" in message
    assert len(info.value.bad) == SHOWN + 2


def test_skip_bad_leaves_out_counts_and_lists_bad_entries(tmp_path):
    entries = [entry("a.jpg"), entry("b.jpg"), entry("c.jpg"), entry("d.jpg"), entry("e.jpg", n=2), entry("f.jpg", "val")]
    path = write_dataset(tmp_path, entries)
    (tmp_path / "images" / "b.jpg").unlink()
    (tmp_path / "images" / "c.jpg").write_bytes(b"garbage")
    split = read(path, skip_bad=True)
    assert [p.name for p in split.image_paths] == ["a.jpg", "d.jpg"]
    assert split.captions[5:] == tuple(f"caption {i} of d.jpg" for i in range(5))
    assert [(b.index, b.filename) for b in split.skipped] == [(1, "b.jpg"), (2, "c.jpg"), (4, "e.jpg")]
    assert "image file not found" in split.skipped[0].reason and "cannot read image" in split.skipped[1].reason
    assert split.skipped[2].reason == "has 2 non-empty captions, 5 are required"
    assert split.head(1).skipped == split.skipped


def test_skip_bad_with_nothing_left_is_an_error(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg", n=1)])
    with pytest.raises(ValueError, match="all 1 entries of split\\(s\\) \\['train'\\] are bad"):
        read(path, skip_bad=True)


def test_limit_checks_only_the_kept_entries(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg"), entry("b.jpg"), entry("c.jpg", "val"), entry("d.jpg")])
    (tmp_path / "images" / "d.jpg").write_bytes(b"garbage")
    assert [p.name for p in read(path, limit=2).image_paths] == ["a.jpg", "b.jpg"]
    with pytest.raises(BadDataError):
        read(path, limit=3)


def test_a_10000_word_caption_is_read_and_truncated_by_the_tokenizer(tmp_path, text_model_dir):
    from core.towers.text import TextTower

    long = " ".join(["dog"] * 10_000)
    e = entry("a.jpg")
    e["sentences"][0]["raw"] = long
    split = read(write_dataset(tmp_path, [e]))
    assert split.captions[0] == long
    tokens = TextTower(str(text_model_dir), max_length=24).tokenize(list(split.captions))
    assert tokens["input_ids"].shape == (5, 24) and bool(tokens["attention_mask"][0].all())


def test_unknown_split_lists_the_present_ones(tmp_path):
    path = write_dataset(tmp_path, [entry("a.jpg")])
    with pytest.raises(ValueError, match=r"splits present: \['train'\]"):
        read_karpathy(path, tmp_path / "images", ["test"], "test")


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"images": [entry("a.jpg")]}).encode()[:40], "not valid JSON"),  # cut short
    (b"", "not valid JSON"),
    ('{"images": [{"filename": "\u00e9.jpg"}]}'.encode("latin-1"), "not valid JSON .*'utf-8' codec can't decode"),
    (b"[]", "'images' list"),
    (b'{"images": {"a.jpg": {}}}', "'images' list"),
])
def test_malformed_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=message) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ")


def write_precomputed(root, split, n_img, k=5, rows=None, dim=6):
    np.save(root / f"{split}_ims.npy", np.random.default_rng(0).normal(size=(rows or n_img, 4, dim)).astype(np.float32))
    (root / f"{split}_caps.txt").write_text("".join(f"caption {i}\n" for i in range(n_img * k)))


def test_precomputed_features(tmp_path):
    write_precomputed(tmp_path, "train", 3)
    split = read_precomputed(tmp_path, ["train", "restval"], "train")
    assert split.features.shape == (3, 4, 6) and split.n_captions == 15 and split.image_paths is None
    write_precomputed(tmp_path, "dev", 2, rows=10)  # one feature row per caption (VSE++ layout)
    assert read_precomputed(tmp_path, ["dev"], "val").features.shape == (2, 4, 6)


def test_precomputed_captions_are_lines_only_at_newlines(tmp_path):
    write_precomputed(tmp_path, "train", 1)
    odd = ["form\ffeed", "file\x1cseparator", "line\u2028separator", "tab\tand  spaces", "trailing blank lines"]
    (tmp_path / "train_caps.txt").write_text("\n".join(odd) + "\n\n \n", encoding="utf-8")
    assert read_precomputed(tmp_path, ["train"], "train").captions == tuple(odd)


@pytest.mark.parametrize("make,message", [
    (lambda d: np.save(d / "train_ims.npy", np.zeros((3, 4))), "expected \\(images, regions, dim\\)"),
    (lambda d: np.save(d / "train_ims.npy", np.zeros((0, 4, 6))), "shape \\(0, 4, 6\\)"),
    (lambda d: np.save(d / "train_ims.npy", np.full((3, 4, 6), "x")), "expected \\(images, regions, dim\\) numbers"),
    (lambda d: (d / "train_ims.npy").write_bytes(b"\x93NUMPY garbage"), "not a readable .npy array"),
    (lambda d: write_precomputed(d, "restval", 2, dim=5), "different feature shapes \\(regions, dim\\)"),
    (lambda d: (d / "train_caps.txt").write_bytes("caption \u00e9\n".encode("latin-1") * 15), "not UTF-8 text"),
    (lambda d: (d / "train_caps.txt").write_text("x\n" * 7 + " \n" + "x\n" * 7),
     "1 empty caption line\\(s\\), the first at line 8; .*cannot be skipped \\(--skip-bad does not apply\\)"),
])
def test_bad_precomputed_files_name_the_file_and_the_problem(tmp_path, make, message):
    write_precomputed(tmp_path, "train", 3)
    make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        read_precomputed(tmp_path, ["train", "restval"], "train")
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(tmp_path, monkeypatch, bad):
    write_precomputed(tmp_path, "train", 5)
    feats = np.load(tmp_path / "train_ims.npy")
    feats[3, 2, 1] = feats[4, 0, 0] = bad
    np.save(tmp_path / "train_ims.npy", feats)
    monkeypatch.setattr(precomputed, "BLOCK_BYTES", 2 * feats[0].nbytes)  # three blocks
    with pytest.raises(ValueError, match="train_ims.npy: 2 of 5 images have NaN or Inf features \\(the first: row 3\\)"):
        read_precomputed(tmp_path, ["train"], "train")


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
