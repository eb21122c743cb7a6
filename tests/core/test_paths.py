import pytest

from core.paths import resolve_path


def test_plain_paths_pass_through():
    assert resolve_path("some/dir") == "some/dir" and resolve_path("org/hub-model") == "org/hub-model"


def test_package_references_resolve_into_the_package():
    path = resolve_path("pkg:core/paths.py")
    assert path.endswith("core/paths.py")


def test_missing_package_or_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz"):
        resolve_path("pkg:no_such_package_xyz/file")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_path("pkg:core/missing.bin")
