from export.runtime.device_check import main


def test_device_check_on_the_cpu_provider(exported, tmp_path, capsys):
    import json

    _, out, _ = exported
    assert main([str(out), "--device", "cpu", "--repeats", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "device_check.json").read_text())
    pairs = {(r["variant"], r["mode"]) for r in result["rows"]}
    # variants built for the CPU, each way of calling them; CUDA graphs only exist on CUDA
    assert pairs == {(v, m) for v in ("fp32", "optimized", "int8") for m in ("plain", "io_binding", "static_batch_1")}
    for row in result["rows"]:
        floor = 0.9999 if row["variant"] != "int8" else 0.98
        assert row["min_cosine_text"] >= floor and row["min_cosine_image"] >= floor
        assert row["providers"][0] == "CPUExecutionProvider" and row["caption_encoding_batch1"]["n"] == 2
    assert "| fp32 | static_batch_1 |" in (tmp_path / "device_check.md").read_text()
