import csv
import io

import pytest

from core.io import write_json
from distill.cli import main
from eval.compare import ReportMissing, compare, compare_rows, short_machine
from eval.report import write_report
from tests.eval.test_report import BENCH, RESULTS


def _run(root, name: str, bench: dict | None) -> str:
    """A run directory holding only what `report` reads, and the report made from it."""
    run = root / name
    write_json(run / "eval" / "results.json", RESULTS)
    if bench:
        write_json(run / "bench" / "latency.json", bench)
    write_report(run, f"itr-distill report {run}")
    return str(run)


@pytest.fixture()
def two_runs(tmp_path):
    gpu = {**BENCH, "machine": {**BENCH["machine"], "cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "cpu_count": 16,
                                "gpu": "NVIDIA H200"}}
    return [_run(tmp_path, "cpu-run", BENCH), _run(tmp_path, "gpu-run", gpu)]


def test_table_has_every_system_of_both_runs(two_runs):
    table = compare(two_runs)
    lines = table.splitlines()
    assert lines[0].startswith("| run | system | seeds | i2t R@1 |") and "machine |" in lines[0]
    body = lines[2:]
    assert len(body) == 10  # 5 report systems each
    assert [line.split(" | ")[0].lstrip("| ") for line in body] == [two_runs[0]] * 5 + [two_runs[1]] * 5
    baseline = next(line for line in body if "Student, no distillation" in line)
    assert "| 0,1 |" in baseline and "210.0 ± 10.0" in baseline and "| 10.0x |" in baseline
    assert "| 4.00 | pytorch cpu |" in baseline and baseline.endswith("| cpu (2 cores) |")
    assert body[-1].endswith("| Intel Xeon (16 cores) + NVIDIA H200 |")


def test_csv_and_markdown_files_hold_the_same_rows(two_runs, tmp_path):
    csv_path, md_path = tmp_path / "out" / "compare.csv", tmp_path / "out" / "compare.md"
    table = compare(two_runs, str(csv_path), str(md_path))
    assert md_path.read_text() == table
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    expected = compare_rows(two_runs)
    assert [(r["run"], r["system"]) for r in rows] == [(e.run, e.label) for e in expected]
    baseline = next(r for r in rows if r["group"] == "baseline")
    assert float(baseline["rsum"]) == 210.0 and float(baseline["rsum_std"]) == 10.0 and baseline["seeds"] == "0;1"
    assert float(baseline["speedup_vs_teacher"]) == 10.0 and float(baseline["latency_p50_ms"]) == 4.0


def test_a_run_without_a_report_is_a_clear_error(two_runs, tmp_path, capsys):
    missing = tmp_path / "not-reported"
    missing.mkdir()
    with pytest.raises(ReportMissing, match="itr-distill report"):
        compare([two_runs[0], str(missing)], csv_path=str(tmp_path / "x.csv"))
    assert not (tmp_path / "x.csv").exists()  # nothing half-written
    assert main(["compare", two_runs[0], str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing / "report.json") in err and "itr-distill report" in err


def test_cli_prints_the_table(two_runs, capsys):
    assert main(["compare", *two_runs]) == 0
    assert capsys.readouterr().out == compare(two_runs)


def test_short_machine():
    assert short_machine(None) == "-"
    assert short_machine({"cpu": "AMD EPYC 7B13", "cpu_count": 2, "gpu": None}) == "AMD EPYC 7B13 (2 cores)"
