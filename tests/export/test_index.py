import numpy as np
import pytest

from export.runtime import GalleryIndex, faiss_available

MODEL = {"source_sha256": "abc", "embedding_dim": 8}


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_top_k_equals_a_full_sort():
    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng, 50), _unit(rng, 4)
    index = GalleryIndex(gallery, [f"img{i}" for i in range(50)], "image", MODEL, backend="numpy")
    scores, idx = index.search(queries, k=7)
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, expected, axis=1), rtol=1e-6)


def test_ties_go_to_the_lower_index_and_k_is_clipped():
    gallery = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    index = GalleryIndex(gallery, list("abcd"), "image", MODEL, backend="numpy")
    _, idx = index.search(np.array([[1.0, 0.0]]), k=10)
    assert idx.tolist() == [[0, 2, 3, 1]]
    assert [h.id for h in index.hits(np.array([1.0, 0.0]), k=2)] == ["a", "c"]


def test_bad_queries_and_galleries_are_named():
    index = GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"], "text", MODEL)
    with pytest.raises(ValueError, match="4 dims, the index has 3"):
        index.search(np.ones((1, 4)))
    with pytest.raises(ValueError, match="one id each"):
        GalleryIndex(np.eye(3, dtype=np.float32), ["a"], "text", MODEL)
    with pytest.raises(ValueError, match="modality"):
        GalleryIndex(np.eye(3, dtype=np.float32), ["a", "b", "c"], "audio", MODEL)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    index = GalleryIndex(_unit(rng, 20), [f"caption {i}" for i in range(20)], "text", MODEL)
    index.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx", expect_model=MODEL)
    assert loaded.ids == index.ids and loaded.modality == "text" and loaded.model == MODEL
    q = _unit(rng, 3)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)


def test_index_from_another_model_is_refused(tmp_path):
    GalleryIndex(np.eye(8, dtype=np.float32), list("abcdefgh"), "image", MODEL).save(tmp_path / "idx")
    with pytest.raises(ValueError, match="built by another model.*source_sha256: index 'abc' vs export 'xyz'"):
        GalleryIndex.load(tmp_path / "idx", expect_model={**MODEL, "source_sha256": "xyz"})


def test_damaged_index_is_refused(tmp_path):
    GalleryIndex(np.eye(8, dtype=np.float32), list("abcdefgh"), "image", MODEL).save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "embeddings.npy", np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"embeddings.npy: shape \(4, 4\) does not match index.json \(8 x 8\)"):
        GalleryIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_text("{")
    with pytest.raises(ValueError, match="index.json: not valid JSON"):
        GalleryIndex.load(tmp_path / "idx")


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_backend_agrees_with_numpy():
    rng = np.random.default_rng(2)
    gallery, queries = _unit(rng, 200, 16), _unit(rng, 5, 16)
    exact = GalleryIndex(gallery, [str(i) for i in range(200)], "image", MODEL, backend="numpy").search(queries, 10)
    flat = GalleryIndex(gallery, [str(i) for i in range(200)], "image", MODEL, backend="faiss").search(queries, 10)
    np.testing.assert_array_equal(exact[1], flat[1])
    np.testing.assert_allclose(exact[0], flat[0], rtol=1e-5)
