import numpy as np
import pytest

from teacher.cache import ScoreCacheMismatch, cache_identity, open_score_cache, write_score_cache


def filled(scores):
    return lambda out: out.__setitem__(slice(None), scores)


def identity(**changes):
    base = cache_identity("t" * 64, "d" * 64, "train", 2, 10)
    return {**base, **changes}


def test_round_trip_is_memory_mapped(tmp_path):
    scores = np.arange(20, dtype=np.float32).reshape(2, 10)
    write_score_cache(tmp_path / "c", identity(), filled(scores))
    loaded = open_score_cache(tmp_path / "c", identity())
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, scores)
    np.testing.assert_array_equal(loaded[np.ix_([1], [0, 9])], [[10, 19]])


def test_mismatch_is_refused_naming_each_field(tmp_path):
    write_score_cache(tmp_path / "c", identity(), filled(np.zeros((2, 10))))
    with pytest.raises(ScoreCacheMismatch) as info:
        open_score_cache(tmp_path / "c", identity(teacher_checkpoint_sha256="x" * 64, dataset_fingerprint="y" * 64))
    message = str(info.value)
    assert "teacher_checkpoint_sha256" in message and "dataset_fingerprint" in message and "split" not in message
    assert str(tmp_path / "c") in message


def test_bad_scores_are_not_cached(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        write_score_cache(tmp_path / "c", identity(), filled(np.full((2, 10), np.nan)))
    with pytest.raises(ValueError, match="shape"):
        write_score_cache(tmp_path / "c", identity(), filled(np.zeros((3, 10))))
    assert not (tmp_path / "c").exists()
