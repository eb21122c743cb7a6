import pytest

from eval.metrics import KEYS
from eval.records import EvalResults, OnnxParity, SystemResult


def _metrics(r1: float, meanr: float = 2.0) -> dict:
    return {k: (meanr if k.endswith(("medr", "meanr")) else r1) for k in KEYS}


def test_results_round_trip_through_their_file(tmp_path):
    teacher = SystemResult("teacher", "teacher", 0, _metrics(30.0), matching="SCAN t2i cross attention", scored="every pair")
    student = SystemResult("distilled-seed0", "distilled", 0, _metrics(20.0), losses=["contrastive", "kd"])
    onnx = SystemResult("onnx-int8", "onnx-int8", None, _metrics(19.0, 2.5), source="distilled-seed0", variant="int8",
                        parity=OnnxParity.compare(_metrics(19.0, 2.5), student.metrics, 2.0))
    results = EvalResults("test", 1, 10, 5, [teacher, student, onnx])
    results.write(tmp_path / "results.json")
    assert EvalResults.read(tmp_path / "results.json") == results
    written = onnx.to_dict()  # the parity figures sit beside the metrics; unset fields are left out
    assert written["r1_drop_vs_pytorch"] == 1.0 and written["r1_drop_bound"] == 2.0 and "losses" not in written


def test_parity_compares_recalls_ranks_and_the_r1_bound():
    parity = OnnxParity.compare(_metrics(19.0, 2.5), _metrics(20.0), r1_drop_bound=0.5)
    assert parity.recall_difference_vs_pytorch == 1.0 and parity.rank_difference_vs_pytorch == 0.5
    assert parity.r1_drop_vs_pytorch == 1.0 and not parity.within_bound
    assert OnnxParity.compare(_metrics(21.0), _metrics(20.0), 0.0).within_bound  # a gain is no drop


def test_an_older_file_without_captions_per_image_reads_as_five():
    data = {"split": "test", "folds": 5, "gallery_images": 10,
            "systems": [{"name": "teacher", "group": "teacher", "seed": 0, "metrics": _metrics(1.0)}]}
    assert EvalResults.from_dict(data).captions_per_image == 5


@pytest.mark.parametrize("data, message", [
    ({"split": "test", "systems": []}, "not an evaluation results file"),
    ({"split": "test", "gallery_images": 1, "systems": [{"name": "x", "group": "x", "metrics": {}, "colour": 1}]},
     r"unknown fields \['colour'\]"),
])
def test_a_foreign_file_is_named(data, message):
    with pytest.raises(ValueError, match=message):
        EvalResults.from_dict(data, "runs/x/eval/results.json")
