import numpy as np
import pytest
import torch

from core.ranking import top_k_ids
from teacher.cache import ScoreCacheMismatch
from teacher.scoring import candidate_scorer, encode_split, score_all
from teacher.topk import build_topk_cache, open_topk_cache, topk_identity

K = 4


@pytest.fixture()
def job(tiny_teacher, splits, tmp_path):
    """A top-K job on the val split: a random first stage proposes, the tiny teacher scores."""
    split = splits["val"]
    images, captions = encode_split(tiny_teacher, split, tiny_teacher.image_tower.preprocess(), 8, torch.device("cpu"), False)
    rng = np.random.default_rng(0)
    img_emb, cap_emb = rng.normal(size=(split.n_images, 6)), rng.normal(size=(split.n_captions, 6))
    def candidates():
        return {"t2i": top_k_ids(cap_emb, img_emb, K)[0], "i2t": top_k_ids(img_emb, cap_emb, K)[0]}
    identity = topk_identity("teacher-sha", split.fingerprint(), "val", split.n_images, split.n_captions, K,
                             {"kind": "student", "sha256": "generator-sha"}, "float32")
    dense = score_all(tiny_teacher, images, captions, progress=False)
    return tmp_path / "cache", identity, candidates, candidate_scorer(tiny_teacher, images, captions), dense


def test_round_trip_holds_the_teacher_scores_of_each_query_and_its_candidates(job):
    out, identity, candidates, scorer, dense = job
    counts = build_topk_cache(out, identity, candidates, scorer, shard_queries=7, progress=False)
    assert counts == {"parts": 12 + 3, "reused": 0, "scored": 15}  # 80 captions, 16 images in parts of 7
    cache = open_topk_cache(out, identity)
    expected = candidates()
    np.testing.assert_array_equal(cache["t2i_candidates"], expected["t2i"])
    np.testing.assert_array_equal(cache["i2t_candidates"], expected["i2t"])
    captions = np.arange(80)[:, None]
    np.testing.assert_allclose(cache["t2i_scores"], dense[cache["t2i_candidates"], captions], atol=1e-5)
    np.testing.assert_allclose(cache["i2t_scores"], dense[np.arange(16)[:, None], cache["i2t_candidates"]], atol=1e-5)
    assert isinstance(cache["t2i_scores"], np.memmap)
    assert not out.with_name("cache.partial").exists()


@pytest.mark.parametrize("field,value", [("teacher_checkpoint_sha256", "other"), ("k", K + 1),
                                         ("candidate_generator", {"kind": "onnx", "sha256": "x"}),
                                         ("dataset_fingerprint", "other-data")])
def test_a_cache_for_another_run_is_refused_naming_the_difference(job, field, value):
    out, identity, candidates, scorer, _ = job
    build_topk_cache(out, identity, candidates, scorer, shard_queries=40, progress=False)
    with pytest.raises(ScoreCacheMismatch, match=field):
        open_topk_cache(out, {**identity, field: value})


def test_an_interrupted_job_resumes_from_its_finished_parts(job):
    out, identity, candidates, scorer, _ = job
    build_topk_cache(out, identity, candidates, scorer, shard_queries=5, progress=False)
    whole = {k: np.array(v) for k, v in open_topk_cache(out, identity).items()}
    again = out.with_name("again")
    calls = []

    def dies_after_three(direction, queries, cands):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(direction)
        return scorer(direction, queries, cands)

    with pytest.raises(KeyboardInterrupt):
        build_topk_cache(again, identity, candidates, dies_after_three, shard_queries=5, progress=False)
    assert not again.exists() and len(list(again.with_name("again.partial").glob("parts/*.npy"))) == 3
    counts = build_topk_cache(again, identity, candidates, scorer, shard_queries=5, progress=False)
    assert counts == {"parts": 16 + 4, "reused": 3, "scored": 17}
    for key, value in open_topk_cache(again, identity).items():
        np.testing.assert_array_equal(value, whole[key])


def test_an_unfinished_job_for_another_teacher_is_discarded(job):
    out, identity, candidates, scorer, _ = job
    with pytest.raises(KeyboardInterrupt):
        build_topk_cache(out, identity, candidates, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()),
                         shard_queries=5, progress=False)
    other = {**identity, "teacher_checkpoint_sha256": "new-teacher"}
    counts = build_topk_cache(out, other, candidates, scorer, shard_queries=5, progress=False)
    assert counts["reused"] == 0
    open_topk_cache(out, other)


def test_ranks_split_the_parts_and_the_main_rank_merges(job):
    """Two ranks run one after the other, without a process group: same cache as one process."""
    from core.distributed import Ranks

    class Sequential(Ranks):
        def barrier(self) -> None:
            pass

        def all_objects(self, obj: object) -> list:  # no other rank runs alongside: each sees its own answer
            return [obj] * self.world

    out, identity, candidates, scorer, _ = job
    build_topk_cache(out, identity, candidates, scorer, shard_queries=6, progress=False)
    single = {k: np.array(v) for k, v in open_topk_cache(out, identity).items()}
    sharded = out.with_name("sharded")
    partial = sharded.with_name("sharded.partial")
    # rank 1 would fail without candidates; rank 0 prepares them. Run rank 0's preparation and rank 1's share first
    with pytest.raises(KeyboardInterrupt):
        build_topk_cache(sharded, identity, candidates, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()),
                         shard_queries=6, progress=False)
    counts1 = build_topk_cache(sharded, identity, candidates, scorer, shard_queries=6, ranks=Sequential(1, 2), progress=False)
    assert counts1["scored"] == 8 and not sharded.exists()  # 14 + 3 parts: rank 1 takes parts 1, 3, ..., 15
    assert len(list(partial.glob("parts/*.npy"))) == 8
    counts0 = build_topk_cache(sharded, identity, candidates, scorer, shard_queries=6, ranks=Sequential(0, 2), progress=False)
    assert counts0 == {"parts": 9, "reused": 0, "scored": 9}
    for key, value in open_topk_cache(sharded, identity).items():
        np.testing.assert_array_equal(value, single[key])


def test_top_k_ids_are_the_best_first():
    rng = np.random.default_rng(1)
    queries, gallery = rng.normal(size=(9, 5)), rng.normal(size=(30, 5))
    full = queries @ gallery.T
    for gallery_block in (30, 7, 4):  # the gallery whole, in blocks, in blocks smaller than k
        ids, scores = top_k_ids(queries, gallery, 6, block=4, gallery_block=gallery_block)
        np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :6])
        np.testing.assert_allclose(scores, np.take_along_axis(full, ids, 1), rtol=1e-5)
    with pytest.raises(ValueError, match="gallery size"):
        top_k_ids(queries, gallery, 31)
