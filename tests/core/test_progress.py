import logging

from core import progress as progress_module


def test_long_loops_log_progress_lines_when_not_on_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)  # every update is due
    with caplog.at_level(logging.INFO, logger="itr_distill"):
        assert list(progress_module.progress(range(5), "encode captions")) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("encode captions") for line in lines)
    assert any("5/5" in line for line in lines) and any("it/s" in line or "s/it" in line for line in lines)


def test_disabled_progress_logs_nothing(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="itr_distill"):
        assert list(progress_module.progress(range(3), "quiet", enabled=False)) == [0, 1, 2]
    assert not caplog.records


def test_per_step_postfixes_do_not_flood_the_log(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 3600.0)
    with caplog.at_level(logging.INFO, logger="itr_distill"):
        bar = progress_module.progress(range(50), "train")
        for _ in bar:
            bar.set_postfix(loss="1.0")
    assert len(caplog.records) <= 1


def test_file_checks_report_their_progress(monkeypatch, caplog, tmp_path):
    from PIL import Image

    from core.data.validate import check_files, image_problem

    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for p in paths:
        Image.new("RGB", (8, 8)).save(p)
    with caplog.at_level(logging.INFO, logger="itr_distill"):
        assert check_files(paths, image_problem) == {}
    assert any(r.getMessage().startswith("file check (image_problem)") and "3/3" in r.getMessage()
               for r in caplog.records)
