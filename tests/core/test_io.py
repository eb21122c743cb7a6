import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from core.io import atomic_dir, atomic_path, read_json, sha256_json, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.json"):
        read_json(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(ValueError, match="y.json: not valid JSON"):
        read_json(tmp_path / "y.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.json: not valid JSON"):
        read_json(tmp_path / "deep.json")


def test_json_hash_is_order_independent():
    assert sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1}) != sha256_json({"a": 2, "b": 1})


def test_outputs_get_ordinary_permissions(tmp_path):
    """Temporary files and directories are private; what is published must be readable like any new file."""
    import os

    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "f.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_fallback_without_an_exchange_puts_a_moved_aside_directory_back(tmp_path, monkeypatch):
    import core.io

    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    monkeypatch.setattr(core.io, "_exchange", lambda a, b: False)
    os.replace(target, tmp_path / ".d.old")  # as a kill between the fallback's two renames leaves it
    with pytest.raises(RuntimeError):
        with atomic_dir(target):
            raise RuntimeError
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and (target / "b").read_text() == "new"


# Three threads write two versions in turn, forever, each through one kind of atomic writer: a JSON
# file, a safetensors file (as checkpoints and weights are written) and a directory of two files (as
# score caches, exports, indexes and checkpoints are), so a kill at any moment finds all three busy.
WRITER = """
import sys, threading
from pathlib import Path
import numpy as np, torch
from core.checkpoint import save_tensors
from core.io import atomic_dir, write_json
out, n = Path(sys.argv[1]), 1 << 20

def write_dir(v):
    with atomic_dir(out / "d") as tmp:
        np.save(tmp / "x.npy", np.full(n, v))
        write_json(tmp / "meta.json", {"v": v})

writers = [lambda v: write_json(out / "a.json", {"v": v, "payload": [v] * (n // 8)}),
           lambda v: save_tensors({"w": torch.full((n,), float(v))}, out / "w.safetensors"), write_dir]
for writer in writers:
    writer(0)
(out / "ready").touch()
for writer in writers:
    threading.Thread(target=lambda w=writer: [w(i % 2) for i in range(10**9)]).start()
"""


def _complete_outputs(out) -> None:
    data = read_json(out / "a.json")
    assert set(data["payload"]) == {data["v"]}
    w = load_file(str(out / "w.safetensors"))["w"]
    assert w.numel() == 1 << 20 and w.unique().numel() == 1
    x, meta = np.load(out / "d" / "x.npy"), read_json(out / "d" / "meta.json")
    assert x.size == 1 << 20 and set(np.unique(x)) == {meta["v"]}


def test_writers_killed_at_random_moments_leave_every_output_complete(tmp_path):
    rng = random.Random()
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env={**os.environ, "PYTHONPATH": os.getcwd()})
        while not (tmp_path / "ready").exists():
            assert child.poll() is None, "the writer stopped by itself"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        _complete_outputs(tmp_path)
        (tmp_path / "ready").unlink()
