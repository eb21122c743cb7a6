"""`ConcatenatedRows`: several (memory-mapped) arrays indexed as their concatenation, without copying it."""
from pathlib import Path

import numpy as np
import pytest

from core.data.precomputed import read_precomputed
from core.data.records import CaptionSplit
from core.data.rows import ConcatenatedRows

SIZES = (3, 1, 4)  # a one-row part in the middle


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 4, 5)).astype(np.float32) for n in SIZES]
    return ConcatenatedRows(parts), np.concatenate(parts)


def test_shape_and_attributes(arrays):
    view, ref = arrays
    assert (view.shape, view.dtype, view.ndim, view.nbytes, len(view)) == (ref.shape, ref.dtype, 3, ref.nbytes, 8)
    assert len(view.parts) == 3 and isinstance(view.parts, tuple)
    np.testing.assert_array_equal(np.asarray(view), ref)
    assert np.asarray(view, dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("i", list(range(-8, 8)))
def test_int_rows(arrays, i):
    view, ref = arrays
    np.testing.assert_array_equal(view[i], ref[i])
    np.testing.assert_array_equal(view[i, 2], ref[i, 2])


@pytest.mark.parametrize("rows", [slice(None), slice(1, 6), slice(3, 4), slice(4, 8), slice(0, 8, 3), slice(1, None, 2),
                                  slice(None, None, -1), slice(6, 1, -2), slice(-2, None), slice(5, 2), slice(20, 30)])
def test_slices(arrays, rows):
    view, ref = arrays
    np.testing.assert_array_equal(np.asarray(view[rows]), ref[rows])
    np.testing.assert_array_equal(np.asarray(view[rows, :2]), ref[rows, :2])


def test_a_slice_inside_one_part_is_that_part_s_view(arrays):
    view, _ = arrays
    inside = view[4:7]
    assert isinstance(inside, np.ndarray) and np.shares_memory(inside, view.parts[2])
    spanning = view[1:6]
    assert isinstance(spanning, ConcatenatedRows) and len(spanning.parts) == 3
    assert all(np.shares_memory(a, b) for a, b in zip(spanning.parts, view.parts, strict=True))


def test_int_arrays_in_any_order_with_duplicates(arrays):
    view, ref = arrays
    ids = np.random.default_rng(1).integers(-8, 8, size=20)
    np.testing.assert_array_equal(view[ids], ref[ids])
    np.testing.assert_array_equal(view[list(ids)], ref[ids])
    np.testing.assert_array_equal(view[ids, :3], ref[ids, :3])
    np.testing.assert_array_equal(view[np.array([7, 0, 3, 3, 0])], ref[[7, 0, 3, 3, 0]])
    assert view[np.array([], dtype=int)].shape == (0, 4, 5) and view[[]].shape == (0, 4, 5)


@pytest.mark.parametrize("rows", [8, -9, np.array([0, 8]), [-9], 100])
def test_out_of_range_rows(arrays, rows):
    view, _ = arrays
    with pytest.raises(IndexError, match="valid ids are \\[-8, 8\\)"):
        view[rows]


def test_parts_must_agree():
    with pytest.raises(ValueError):
        ConcatenatedRows([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError):
        ConcatenatedRows([np.zeros((2, 3)), np.zeros((2, 3), np.float16)])


def test_precomputed_splits_are_views_of_their_files(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"train": rng.normal(size=(3, 4, 8)).astype(np.float32), "restval": rng.normal(size=(2, 4, 8)).astype(np.float32)}
    for name, array in feats.items():
        np.save(tmp_path / f"{name}_ims.npy", array)
        (tmp_path / f"{name}_caps.txt").write_text("".join(f"{name} {i}\n" for i in range(5 * len(array))))
    split = read_precomputed(tmp_path, ["train", "restval"], "train")
    assert isinstance(split.features, ConcatenatedRows)
    assert all(isinstance(part, np.memmap) for part in split.features.parts)
    assert [Path(part.filename) for part in split.features.parts] == [tmp_path / f"{n}_ims.npy" for n in ("train", "restval")]
    ref = np.concatenate([feats["train"], feats["restval"]])
    np.testing.assert_array_equal(np.asarray(split.features), ref)
    assert split.captions == tuple(f"train {i}" for i in range(15)) + tuple(f"restval {i}" for i in range(10))
    assert split.n_images == 5 and split.caption_image.tolist() == [i // 5 for i in range(25)]

    head = split.head(4)
    assert head.n_images == 4 and head.captions == split.captions[:20]
    np.testing.assert_array_equal(np.asarray(head.features), ref[:4])
    assert split.fingerprint() == CaptionSplit(split.name, split.source, split.captions, 5, features=ref).fingerprint()
    assert head.fingerprint() != split.fingerprint()
