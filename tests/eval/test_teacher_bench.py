import json

from distill.cli import main


def test_bench_teacher_times_three_methods_on_the_same_inputs(tmp_path, capsys):
    out = tmp_path / "tb"
    assert main(["bench", "teacher", "--images", "6", "--captions", "11", "--regions", "5", "--words", "7", "--dim", "16",
                 "--repeats", "2", "--imram", "2", "--out", str(out)]) == 0
    result = json.loads((out / "teacher_scoring.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["loop", "batched", "matmul-floor", "imram-text-2-steps"]
    assert all(r["seconds"] > 0 and r["pairs_per_s"] > 0 for r in result["rows"])
    assert result["max_abs_diff_vs_loop"] <= 1e-5  # equal scores, float32
    assert result["settings"]["images"] == 6 and result["machine"]["cpu_count"] >= 1
    printed = capsys.readouterr().out
    assert "batched vs loop" in printed and (out / "teacher_scoring.md").read_text() == printed.rstrip("\n") + "\n"
