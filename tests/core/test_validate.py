import importlib

import pytest
from PIL import Image, ImageFile

from core.data.validate import CheckCache, check_files, image_problem
from tests.core.test_images import _cut_in_half, _jpeg


def test_the_fast_check_catches_a_truncated_jpeg(tmp_path):
    good, bad = _jpeg(tmp_path / "good.jpg", (512, 384)), _cut_in_half(_jpeg(tmp_path / "half.jpg", (512, 384)))
    assert image_problem(good) is None
    assert "half.jpg: cannot read image (image file is truncated" in image_problem(bad)
    assert check_files([good, bad], image_problem) == {bad: image_problem(bad)}


def test_no_imported_library_lets_truncated_images_through():
    for module in ("distill.stages", "export.runtime.session", "sentence_transformers", "timm"):
        importlib.import_module(module)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_to_check_when_truncated_images_load(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        image_problem(_jpeg(tmp_path / "a.jpg"))


def test_cache_checks_each_file_once_until_it_changes(tmp_path, monkeypatch):
    files = [tmp_path / f"{name}.txt" for name in "abc"]
    for path in files:
        path.write_text("fine")
    files[2].write_text("bad")
    seen = []

    def says_bad(path):
        seen.append(path.name)
        return f"{path}: bad" if path.read_text() == "bad" else None

    cache = CheckCache(tmp_path / "run" / "checks.json")
    assert cache(files, says_bad) == {files[2]: f"{files[2]}: bad"}
    assert cache(files, says_bad) == {files[2]: f"{files[2]}: bad"} and seen == ["a.txt", "b.txt", "c.txt"]
    files[0].write_text("bad")  # another size: checked again
    assert set(cache(files, says_bad)) == {files[0], files[2]} and seen[3:] == ["a.txt"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # another check environment: everything again
    cache(files, says_bad)
    assert seen[4:] == ["a.txt", "b.txt", "c.txt"]
