import json

import yaml

from core.run_layout import describe
from distill.cli import main
from tests.conftest import tiny_config_dict


def test_bench_input_times_each_pipeline_and_worker_count_and_the_model_step(tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(run, tmp_path / "data")))
    assert main(["data", str(config)]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "input", str(config), "--batches", "5", "--rounds", "2", "--workers", "0", "1", "--steps", "1",
                 "--draft", "--out", str(out)]) == 0
    result = json.loads((out / "input_bench.json").read_text())
    rows = {(r["pipeline"], r["workers"]): r for r in result["rows"]}
    assert set(rows) == {(p, w) for p in ("per-caption decode", "image-level sampler", "uint8 cache",
                                          "per-caption decode, JPEG draft") for w in (0, 1)}
    assert all(r["images_per_s"] > 0 and r["batches"] == 10 and len(r["window_images_per_s"]) == 2 for r in rows.values())
    caption, image = rows[("per-caption decode", 0)], rows[("image-level sampler", 0)]
    assert caption["epoch_decodes"] == 5 * image["epoch_decodes"] == 5 * 48 and rows[("uint8 cache", 1)]["epoch_decodes"] == 0
    step = result["model_step"]
    assert step["images_per_s"] > 0 and step["batch"] == 16 and step["image_tower_trains"]
    assert result["cache"]["build_s"] is not None and describe(
        (run / "images").relative_to(run) / result["cache"]["directory"].split("/")[-1] / "pixels.npy")
    assert result["machine"]["cpu_count"] >= 1 and "uint8 cache, 1 workers" in result["speedups"]
    printed = capsys.readouterr().out
    assert "training bounded by the" in printed and (out / "input_bench.md").read_text() == printed.rstrip("\n") + "\n"
    assert main(["bench", "input", str(config), "--batches", "1", "--rounds", "1", "--workers", "0", "--steps", "0",
                 "--out", str(out)]) == 0
    assert json.loads((out / "input_bench.json").read_text())["cache"]["build_s"] is None  # reused
