import pytest

from eval.scaling import cost_model, ratios


def _rows(system, method, fixed, per_image, sizes, measured=True):
    return [{"system": system, "method": method, "gallery": n, "measured": measured, "p50_ms": fixed + per_image * n}
            for n in sizes]


def test_cost_model_recovers_a_line_and_the_usable_size():
    rows = _rows("teacher", "scan-pytorch-cpu", 1.0, 0.5, [10, 20, 40]) + _rows("student", "exact-numpy", 0.2, 0.001, [10, 1000])
    fits = {c["system"]: c for c in cost_model(rows, usable_ms=100.0)}
    assert fits["teacher"]["fixed_ms"] == pytest.approx(1.0) and fits["teacher"]["ms_per_image"] == pytest.approx(0.5)
    assert fits["teacher"]["usable_gallery"] == 198 and fits["teacher"]["largest_measured"] == 40
    assert fits["student"]["usable_gallery"] == 99_800


def test_extrapolated_points_do_not_enter_the_fit_and_ratios_say_so():
    rows = (_rows("teacher", "scan-pytorch-cpu", 0.0, 1.0, [10, 20]) + _rows("teacher", "scan-pytorch-cpu", 0.0, 9.0, [40], False)
            + _rows("student", "exact-numpy", 1.0, 0.0, [10, 20, 40]))
    (teacher,) = [c for c in cost_model(rows, 100.0) if c["system"] == "teacher"]
    assert teacher["ms_per_image"] == pytest.approx(1.0)
    assert [(r["gallery"], r["teacher_over_student"], r["teacher_measured"]) for r in ratios(rows)] == [
        (10, 10.0, True), (20, 20.0, True), (40, 360.0, False)]
