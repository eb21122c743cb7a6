import json
import logging

import pytest
import yaml
from PIL import Image

from core.config import load_config
from core.data import validate
from distill.cli import main
from distill.stages import load_split


@pytest.fixture()
def config_with_bad_images(tmp_path):
    """A Karpathy dataset whose train split has a missing and a corrupt image among four."""
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        Image.new("RGB", (8, 8), (i, i, i)).save(images / f"{i}.png")
        entries.append({"filename": f"{i}.png", "split": split, "sentences": [{"raw": f"image {i}"}] * 5})
    (images / "1.png").unlink()
    (images / "2.png").write_bytes(b"garbage")
    (tmp_path / "data.json").write_text(json.dumps({"images": entries}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {
        "format": "karpathy", "path": str(tmp_path / "data.json"), "image_root": str(images),
        "splits": {"train": ["train"], "val": ["val"], "test": ["test"]}}}))
    return config


def test_bad_images_stop_the_data_stage_with_one_error(config_with_bad_images, capsys):
    assert main(["data", str(config_with_bad_images)]) == 1
    err = capsys.readouterr().err
    assert "data.json: 2 bad image entries" in err and "--skip-bad" in err
    assert "images[1] (1.png): image file not found" in err and "images[2] (2.png):" in err and "cannot read image" in err


def test_skip_bad_leaves_out_counts_and_lists_them(config_with_bad_images, caplog):
    run = config_with_bad_images.parent / "run"
    logger = logging.getLogger("itr_distill")
    logger.addHandler(caplog.handler)
    try:
        assert main(["data", str(config_with_bad_images), "--skip-bad"]) == 0
    finally:
        logger.removeHandler(caplog.handler)
    assert "train: left out 2 bad image entries" in caplog.text
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["skip_bad"] is True
    assert json.loads((run / "data.json").read_text())["train"] | {"fingerprint": None} == {
        "images": 2, "captions": 10, "source": str(config_with_bad_images.parent / "data.json"), "fingerprint": None,
        "skipped": 2}
    bad = json.loads((run / "bad_data.json").read_text())
    assert bad["skip_bad"] is True and bad["splits"]["val"]["count"] == 0
    entries = bad["splits"]["train"]["entries"]
    assert bad["splits"]["train"]["count"] == 2 and [(e["index"], e["filename"]) for e in entries] == [(1, "1.png"),
                                                                                                        (2, "2.png")]
    assert "image file not found" in entries[0]["reason"] and "cannot read image" in entries[1]["reason"]


def test_later_stages_reuse_the_image_check(config_with_bad_images, monkeypatch):
    assert main(["data", str(config_with_bad_images), "--skip-bad"]) == 0
    checked = []
    original = validate.check_files
    monkeypatch.setattr(validate, "check_files", lambda paths, check: checked.extend(paths) or original(paths, check))
    cfg = load_config(config_with_bad_images, ["data.skip_bad=true"])
    assert load_split(cfg, "train").n_images == 2 and checked == []
    Image.new("RGB", (9, 9)).save(config_with_bad_images.parent / "images" / "0.png")  # changed: checked again
    load_split(cfg, "train")
    assert [p.name for p in checked] == ["0.png"]
