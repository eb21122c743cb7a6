import numpy as np
import pytest
from PIL import Image

from core.data.records import CaptionSplit
from eval.example_figures import write_example_figures
from eval.examples import TOP, ExampleCollector
from eval.figures import training_curves
from eval.metrics import ranks
from teacher.topk import scores_from_dense


def _split(n: int, tmp_path=None) -> CaptionSplit:
    captions = tuple(f"caption {i} of image {i // 5}" for i in range(5 * n))
    if tmp_path is None:
        return CaptionSplit("test", "memory", captions, 5, features=np.zeros((n, 2, 3), np.float32))
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (12, 12), (20 * i % 255, 40, 90)).save(paths[-1])
    return CaptionSplit("test", "memory", captions, 5, image_paths=tuple(paths))


def test_each_system_gets_its_top5_and_the_ground_truth_rank():
    split = _split(12)
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(12, 60)), rng.normal(size=(12, 60))
    collector = ExampleCollector(split, seed=3)
    collector.add_scorer("teacher", scores_from_dense(teacher))  # scored pair lists equal the whole matrix's rows
    collector.add_sims("student", student)
    examples = collector.to_dict("teacher", "student")
    i2t_ranks, t2i_ranks = ranks(student, 5)
    for query in examples["t2i"]:
        caption = query["query"]
        result = query["results"]["student"]
        assert result["ids"] == np.argsort(-student[:, caption])[:TOP].tolist()
        assert result["gt_rank"] == t2i_ranks[caption] and query["ground_truth"] == [caption // 5]
        assert query["results"]["teacher"]["ids"] == np.argsort(-teacher[:, caption])[:TOP].tolist()
    for query in examples["i2t"]:
        assert query["results"]["student"]["gt_rank"] == i2t_ranks[query["query"]]
        assert query["results"]["student"]["texts"][0] == split.captions[query["results"]["student"]["ids"][0]]
    gaps = [q["rank_gap"] for q in examples["disagreements"]]
    assert gaps == sorted(gaps, reverse=True) and all(g > 0 for g in gaps)
    assert gaps[0] == max(abs(int(t) - int(s)) for t, s in zip(ranks(teacher, 5)[1], t2i_ranks, strict=True))


def test_the_same_seed_picks_the_same_queries():
    split = _split(12)
    sims = np.random.default_rng(0).normal(size=(12, 60))
    picked = []
    for _ in range(2):
        collector = ExampleCollector(split, seed=7)
        collector.add_sims("student", sims)
        picked.append([q["query"] for q in collector.to_dict(None, None)["t2i"]])
    assert picked[0] == picked[1] and len(set(picked[0])) == 4


@pytest.mark.parametrize("with_images", [True, False])
def test_figures_show_thumbnails_or_ids(tmp_path, with_images):
    split = _split(12, tmp_path if with_images else None)
    rng = np.random.default_rng(1)
    collector = ExampleCollector(split, seed=0)
    collector.add_sims("teacher", rng.normal(size=(12, 60)))
    collector.add_sims("distilled-seed0", rng.normal(size=(12, 60)))
    examples = collector.to_dict("teacher", "distilled-seed0")
    assert ("image_paths" in examples) is with_images
    out = tmp_path / "figures"
    out.mkdir()
    figures = write_example_figures(examples, out)
    assert set(figures) == {"t2i", "i2t", "disagreements"}
    assert all(Image.open(p).size[0] > 500 for p in figures.values())


def test_training_curves_draw_every_model(tmp_path):
    history = [{"epoch": e, "loss": {"contrastive": 3.0 / e, "total": 3.5 / e}, "val": {"rsum": 100.0 + e}}
               for e in (1, 2, 3)]
    path = training_curves({"teacher": history, "distilled-seed0": history[:2]}, {"teacher": 3}, tmp_path / "c.png")
    assert Image.open(path).size[0] > 500
