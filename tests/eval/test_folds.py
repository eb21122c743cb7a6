"""Several protocols in one evaluation (`eval.folds: [1, 5]`): the same figures as one protocol at a
time, and a teacher that scores only the pairs the protocols rank."""
import numpy as np
import pytest
import torch

from core.config import ConfigError, load_config
from eval.evaluate import metrics_for_folds, teacher_metrics_by_folds
from eval.metrics import block_metrics, check_folds, metrics_by_folds, retrieval_metrics, scored_folds
from eval.records import EvalResults, SystemResult
from eval.report import summarise, to_markdown
from eval.systems import rerank_results, teacher_result
from teacher.ensemble import EnsembleSide
from teacher.model import PairCounter
from teacher.scoring import candidate_scorer, diagonal_scores, encode_split, score_all, side_rows
from teacher.tokens import StoredSide, build_token_store, open_token_store, token_identity
from tests.conftest import build_tiny


def _sims(n_img: int, k: int = 5, seed: int = 0) -> np.ndarray:
    """Teacher-like scores: the ground truth a little above the rest, with noise."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n_img)[:, None] == np.arange(n_img * k)[None, :] // k
    return (rng.normal(size=(n_img, n_img * k)) + 1.5 * truth).astype(np.float32)


def _diagonal(sims: np.ndarray, folds: int, k: int = 5) -> list[np.ndarray]:
    size = sims.shape[0] // folds
    return [sims[f * size:(f + 1) * size, f * size * k:(f + 1) * size * k].copy() for f in range(folds)]


def test_one_evaluation_gives_every_protocol_exactly():
    sims = _sims(20)
    both = metrics_by_folds(sims, 5, [1, 5])
    assert list(both) == [1, 5]
    assert both[1] == retrieval_metrics(sims, 5) and both[5] == retrieval_metrics(sims, 5, folds=5)
    assert metrics_by_folds(sims, 5, [5, 1]) == {5: both[5], 1: both[1]}  # listed order kept
    assert metrics_by_folds(sims, 5, 2) == {2: retrieval_metrics(sims, 5, folds=2)}


@pytest.mark.parametrize("folds, scored", [([1, 5], [1]), ([5, 1], [1]), ([5], [5]), ([5, 10], [5]), ([2, 5], [2, 5]),
                                           ([4, 2, 8], [2]), (3, [3])])
def test_scored_protocols_are_the_coarsest_that_nest_the_others(folds, scored):
    assert scored_folds(folds) == scored


@pytest.mark.parametrize("folds", [[5], [5, 10], [2, 5], [10, 2, 4]])
def test_diagonal_blocks_alone_give_the_figures_of_the_whole_matrix(folds):
    sims = _sims(20)
    blocks = {f: _diagonal(sims, f) for f in scored_folds(folds)}
    assert block_metrics(blocks, 5, folds) == metrics_by_folds(sims, 5, folds)


def test_folds_that_do_not_divide_the_split_name_it():
    check_folds(20, [1, 5], "test")
    with pytest.raises(ValueError, match=r"split 'val' has 16 images, which cannot be split into 5 or 3 equal folds"):
        check_folds(16, [1, 5, 3], "val")


@pytest.mark.parametrize("folds, message", [("[]", "need one or more values >= 1"), ("[1, 0]", "need one or more values >= 1"),
                                            ("[5, 5]", "listed twice"), ("0", "must be > 0"), ("[1, x]", "expected")])
def test_bad_folds_are_refused(folds, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"eval.folds={folds}"])


def test_folds_take_an_int_or_a_list():
    assert load_config(None, ["eval.folds=[1, 5]"]).eval.protocols == [1, 5]
    assert load_config(None, ["eval.folds=5"]).eval.protocols == [5]
    assert load_config(None, []).eval.protocols == [1]


@pytest.fixture()
def store(tiny_teacher, splits, tmp_path):
    split = splits["test"]
    identity = token_identity("t" * 64, split.fingerprint(), split.name, split.n_images, split.n_captions, "float32")
    build_token_store(tiny_teacher, split, tmp_path / "s", identity, tiny_teacher.image_tower.preprocess(), 7,
                      torch.device("cpu"), progress=False)
    return open_token_store(tmp_path / "s", identity)


def _pairs(run):
    before = PairCounter.count
    out = run()
    return out, PairCounter.count - before


def test_row_slices_of_a_store_stay_a_store(store):
    rows = side_rows(store.captions, 10, 30)
    assert isinstance(rows, StoredSide) and len(rows) == 20 and isinstance(rows.tokens, np.memmap)
    whole, part = store.captions[np.arange(10, 30)], rows[np.arange(20)]
    torch.testing.assert_close(part.tokens, whole.tokens)
    torch.testing.assert_close(part.mask, whole.mask)
    ensemble = side_rows(EnsembleSide([store.captions, whole]), 5, 15)  # members stored or encoded alike
    assert isinstance(ensemble.members[0], StoredSide) and len(ensemble) == 10
    torch.testing.assert_close(ensemble.members[1].tokens, whole.tokens[5:15])


def test_the_teacher_scores_the_whole_matrix_once_when_1_is_listed(tiny_teacher, splits, store):
    split = splits["test"]
    full, pairs = _pairs(lambda: score_all(tiny_teacher, store.images, store.captions, progress=False))
    assert pairs == split.n_images * split.n_captions
    (by_folds, scored), pairs = _pairs(lambda: teacher_metrics_by_folds(tiny_teacher, store.images, store.captions,
                                                                         split, [1, 2], progress=False))
    assert pairs == split.n_images * split.n_captions and scored == "every pair"
    assert by_folds == metrics_for_folds(full, split, [1, 2])  # the same scores, sliced: identical figures


def test_reranking_reads_the_matrix_the_teachers_metrics_scored(tiny_teacher, splits, store):
    """With protocol 1 listed, re-ranking looks the teacher's scores up in the matrix its metrics scored:
    no pair is scored twice, and the figures are those of the teacher scoring the candidates itself."""
    split = splits["test"]
    (result, scorer), pairs = _pairs(lambda: teacher_result(tiny_teacher, store.images, store.captions, split, 0,
                                                            [1, 2], 0.5, False, "float32"))
    assert pairs == split.n_images * split.n_captions and result.rsum == result.by_folds[1]["rsum"]
    sims = np.random.default_rng(0).normal(size=(split.n_images, split.n_captions)).astype(np.float32)
    student = SystemResult.of_folds("s", "distilled", 0, metrics_for_folds(sims, split, [1, 2]))
    reranked, pairs = _pairs(lambda: rerank_results(student, sims, scorer, split, [3, 8], 1.0, [1, 2]))
    assert pairs == 0
    scored = rerank_results(student, sims, candidate_scorer(tiny_teacher, store.images, store.captions), split,
                            [3, 8], 1.0, [1, 2])
    for a, b in zip(reranked, scored, strict=True):
        for f in (1, 2):
            assert a.by_folds[f] == pytest.approx(b.by_folds[f])
    _, scorer = teacher_result(tiny_teacher, store.images, store.captions, split, 0, [2], 0.5, False, "float32")
    assert _pairs(lambda: rerank_results(student, sims, scorer, split, [3], 1.0, [2]))[1] > 0  # blocks only: scored


def test_fold_protocols_alone_score_only_the_diagonal_blocks(tiny_teacher, splits, store):
    split, cpi = splits["test"], splits["test"].captions_per_image
    full = score_all(tiny_teacher, store.images, store.captions, progress=False)
    blocks, pairs = _pairs(lambda: list(diagonal_scores(tiny_teacher, store.images, store.captions, 4, cpi,
                                                        progress=False)))
    assert pairs == split.n_images * split.n_captions // 4  # four 4 x 4*cpi blocks
    for got, want in zip(blocks, _diagonal(full, 4, cpi), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    (by_folds, _), pairs = _pairs(lambda: teacher_metrics_by_folds(tiny_teacher, store.images, store.captions, split,
                                                                    [2, 4], progress=False))
    assert pairs == split.n_images * split.n_captions // 2  # the 2 blocks of folds 2 hold those of folds 4
    expected = metrics_for_folds(full, split, [2, 4])
    assert list(by_folds) == [2, 4]
    for f in (2, 4):
        assert by_folds[f] == pytest.approx(expected[f])


def _metrics(rsum: float) -> dict:
    return {**{k: rsum / 6 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")},
            "i2t_medr": 1.0, "i2t_meanr": 1.0, "t2i_medr": 1.0, "t2i_meanr": 1.0, "rsum": rsum}


def test_records_keep_the_first_protocol_as_metrics_and_every_one_by_folds(tmp_path):
    teacher = SystemResult.of_folds("teacher", "teacher", 0, {1: _metrics(300.0), 5: _metrics(420.0)})
    assert teacher.metrics == _metrics(300.0) and teacher.by_folds == {1: _metrics(300.0), 5: _metrics(420.0)}
    assert SystemResult.of_folds("teacher", "teacher", 0, {5: _metrics(1.0)}).by_folds is None  # one protocol: as before
    assert teacher.to_dict()["metrics_by_folds"] == {"1": _metrics(300.0), "5": _metrics(420.0)}
    results = EvalResults("test", [1, 5], 5000, 5, [teacher])
    results.write(tmp_path / "results.json")
    assert EvalResults.read(tmp_path / "results.json") == results
    old = {"split": "test", "folds": 5, "gallery_images": 10,  # a file from before lists were allowed
           "systems": [{"name": "teacher", "group": "teacher", "seed": 0, "metrics": _metrics(1.0)}]}
    assert EvalResults.from_dict(old).folds == [5] and EvalResults.from_dict(old).systems[0].by_folds is None


def test_the_report_adds_a_table_per_further_protocol():
    systems = [SystemResult.of_folds("teacher", "teacher", 0, {1: _metrics(300.0), 5: _metrics(420.0)}),
               *(SystemResult.of_folds(f"distilled-seed{s}", "distilled", s, {1: _metrics(200.0 + s), 5: _metrics(330.0 + s)},
                                       losses=["kd"]) for s in (0, 2))]
    summary = summarise(EvalResults("test", [1, 5], 5000, 5, systems), None)
    md = to_markdown(summary, "cmd")
    assert "5K (all pairs); further tables: COCO 1K (5 folds)." in md and "### COCO 1K (5 folds)" in md
    main, other = md.split("### COCO 1K (5 folds)")
    assert "| 300.0 |" in main and "| 420.0 |" in other and "331.0 ± 1.0" in other and "201.0 ± 1.0" in main
    single = to_markdown(summarise(EvalResults("test", 5, 5000, 5, systems[:1]), None), "cmd")
    assert "COCO 1K (5 folds). Students" in single and "###" not in single


def test_the_plan_counts_the_blocks_the_teacher_scores(tmp_path):
    from distill.plan import make_plan

    def pairs(folds: str) -> int:
        cfg = load_config(None, [f"eval.folds={folds}", "eval.rerank_k=[]", f"run_dir={tmp_path / 'run'}"])
        return make_plan(cfg, ["eval"]).stages[0].teacher_pairs

    data = load_config(None, []).data
    whole = data.synthetic.n_test * data.synthetic.n_test * data.captions_per_image
    assert pairs("1") == pairs("[1, 5]") == pairs("[5, 1]") == whole  # the examples read the whole matrix
    examples = pairs("5") - whole // 5  # without it they are scored
    assert examples > 0 and pairs("[2, 4]") - examples == whole // 2


def test_a_cross_encoder_reranks_within_each_fold_of_each_protocol(text_model_dir, splits):
    teacher = build_tiny("teacher", text_model_dir, matching="cross",
                         cross={"layers": 1, "heads": 2, "ff_dim": 32, "negatives": 2, "eval_top_k": 80})
    split = splits["test"]
    images, captions = encode_split(teacher, split, teacher.image_tower.preprocess(), 8, torch.device("cpu"), False)
    by_folds, how = teacher_metrics_by_folds(teacher, images, captions, split, [1, 2], progress=False)
    assert how == "top-80 of its global score, re-ranked" and list(by_folds) == [1, 2]
    every = metrics_for_folds(score_all(teacher, images, captions, progress=False), split, [1, 2])
    for f in (1, 2):  # every candidate re-ranked (80 >= a fold's captions) is every pair of the fold
        assert by_folds[f] == pytest.approx(every[f])
