"""File I/O that never leaves a half-written file behind, plus content hashes.

Every output of the pipeline goes through `atomic_path` / `atomic_dir`: the bytes are written
next to the target and renamed into place, so a killed process leaves the old complete file or
the new complete one, never a torn one. A directory replaces an existing one by an atomic exchange
on Linux; elsewhere the old one is moved aside first and put back by the next write if a kill
falls between the two renames.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary(tmp: Path, mode: int) -> None:
    """Give a temporary file or directory the permissions a plain create would have (mkstemp and
    mkdtemp make them private)."""
    os.chmod(tmp, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _ordinary(tmp_path, 0o666)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; swap it in for `target` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _ordinary(tmp, 0o777)
        if not target.exists():
            os.replace(tmp, target)
        elif not _exchange(tmp, target):
            old = _aside(target)
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)  # a kill from here to the next rename leaves it for `_recover`
            os.replace(tmp, target)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # after an exchange: the old contents


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _recover(target: Path) -> None:
    """Put back a directory that a killed `atomic_dir` moved aside without an exchange."""
    if not target.exists() and _aside(target).is_dir():
        os.replace(_aside(target), target)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or the
    filesystem cannot, and the caller falls back to two renames."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    """Write `text` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nesting beyond Python's stack
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def read_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Open a .npy array (memory-mapped by default, never unpickling), naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes: identifies checkpoints in manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def keyed_dir(root: str | Path, key: Any) -> tuple[Path, Any, bool]:
    """A cache directory named by what it is made from: (`root`/<hash of key>, the key as its manifest.json
    reads back (tuples become lists), whether that manifest is there and equal to it)."""
    key = json.loads(json.dumps(key))
    directory = Path(root) / sha256_json(key)[:20]
    manifest = directory / "manifest.json"
    return directory, key, manifest.is_file() and read_json(manifest) == key
