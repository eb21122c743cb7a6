"""Ranks that do not share the run directory (node-local disks) fail at once, on every rank, with one
clear message; a shared directory passes. Two ranks are simulated by two threads (a barrier and an
object gather of their own), and once by two real torchrun gloo processes."""
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from core.distributed import NotShared, Ranks, check_shared, shared_file
from core.run_layout import RunPaths
from core.towers.frozen import NODE_FEATURES
from distill.stages import frozen_shared
from tests.conftest import TINY_TOWERS, build_tiny

CPU = torch.device("cpu")
NEEDS_SHARED = "the run directory must be on a file system every node shares"


class _Group:
    def __init__(self, world: int):
        self.wait = threading.Barrier(world, timeout=20).wait
        self.slots: list = [None] * world


@dataclass(frozen=True)
class ThreadRanks(Ranks):
    """A rank of a process group made of threads."""

    group: Any = None

    def barrier(self) -> None:
        self.group.wait()

    def all_objects(self, obj: object) -> list:
        self.group.wait()  # every rank has read the last gather
        self.group.slots[self.rank] = obj
        self.group.wait()
        return list(self.group.slots)


def on_ranks(fn, world: int = 2, local_ranks: tuple[int, ...] = (0, 0)) -> list:
    """fn(ranks) on `world` thread ranks: what each returned or raised."""
    group, results = _Group(world), [None] * world

    def run(rank: int) -> None:
        try:
            results[rank] = fn(ThreadRanks(rank, world, local_ranks[rank], group))
        except Exception as exc:  # noqa: BLE001 - returned for the test to look at
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_shared_run_directory_passes_and_the_marker_is_removed(tmp_path):
    assert on_ranks(lambda ranks: check_shared(tmp_path, ranks)) == [None, None]
    assert list(tmp_path.iterdir()) == []


def test_ranks_that_see_another_directory_fail_on_every_rank(tmp_path):
    dirs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    dirs[1].mkdir(parents=True)
    results = on_ranks(lambda ranks: check_shared(dirs[ranks.rank], ranks))
    assert all(isinstance(r, NotShared) for r in results), results
    message = str(results[0])
    assert str(results[1]) == message
    assert message.startswith(f"{RunPaths(dirs[1]).root / 'shared_check'}{os.sep}")  # rank 1's view of the marker
    assert f"rank 1 on host {socket.gethostname()} cannot see the file rank 0 wrote" in message
    assert NEEDS_SHARED in message and "README 'Several machines'" in message
    assert list((dirs[0] / "shared_check").glob("*")) == []  # rank 0 cleans up after itself


def test_a_file_missing_after_a_barrier_is_the_same_clear_error(tmp_path):
    (tmp_path / "node0").mkdir()
    (tmp_path / "node0" / "store.npy").write_bytes(b"")
    results = on_ranks(lambda ranks: shared_file(tmp_path / f"node{ranks.rank}" / "store.npy", ranks))
    assert all(isinstance(r, NotShared) for r in results), results
    assert str(results[0]).startswith(f"{tmp_path / 'node1' / 'store.npy'}: rank 1 on host ")
    assert on_ranks(lambda ranks: shared_file(tmp_path / "node0" / "store.npy", ranks)) == [tmp_path / "node0" / "store.npy"] * 2


@pytest.fixture()
def frozen_model(text_model_dir):
    return build_tiny("student", text_model_dir, image_tower={**TINY_TOWERS["image_tower"], "freeze": True},
                      text_tower={**TINY_TOWERS["text_tower"], "freeze": True})


def test_frozen_features_rank_0_wrote_elsewhere_are_named(frozen_model, splits, tmp_path):
    results = on_ranks(lambda ranks: frozen_shared(frozen_model, splits["val"], tmp_path / f"node{ranks.rank}", 8, CPU,
                                                   ranks))
    assert all(isinstance(r, NotShared) for r in results), results
    assert str(results[0]).startswith(str(tmp_path / "node1")) and "manifest.json" in str(results[0])


def test_node_local_features_are_built_by_each_nodes_local_rank_0(frozen_model, splits, tmp_path, monkeypatch):
    monkeypatch.setenv(NODE_FEATURES, str(tmp_path / "local"))
    run_features = tmp_path / "run" / "features"
    results = on_ranks(lambda ranks: frozen_shared(frozen_model, splits["val"], run_features, 8, CPU, ranks),
                       local_ranks=(0, 1))
    assert not any(isinstance(r, Exception) for r in results), results
    assert not run_features.exists()
    for image, text in results:
        assert Path(image.tokens.filename).is_relative_to(tmp_path / "local")
        assert Path(text.tokens.filename).is_relative_to(tmp_path / "local")


SCRIPT = """
import os, sys
from core.distributed import leave_process_group, ranks_from_env
ranks_from_env(run_dir=sys.argv[1 + int(os.environ["RANK"])])
print("rank", os.environ["RANK"], "passed")
leave_process_group()  # as the CLI does: a group left open can abort the process at exit
"""


def _torchrun_check(tmp_path: Path, dirs: list[Path]) -> subprocess.CompletedProcess:
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *map(str, dirs)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"})


def test_two_torchrun_processes_on_unshared_directories_fail_with_the_message(tmp_path):
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    for d in dirs:
        d.mkdir()
    done = _torchrun_check(tmp_path, dirs)
    assert done.returncode != 0
    assert done.stderr.count("cannot see the file rank 0 wrote") >= 2, done.stderr[-3000:]  # both ranks say it
    assert f"{dirs[1] / 'shared_check'}" in done.stderr and NEEDS_SHARED in done.stderr
    assert "passed" not in done.stdout


def test_two_torchrun_processes_on_one_directory_pass(tmp_path):
    (tmp_path / "run").mkdir()
    done = _torchrun_check(tmp_path, [tmp_path / "run"] * 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("passed") == 2 and list((tmp_path / "run").iterdir()) == []


def test_on_main_runs_once_on_rank_0_and_every_rank_gets_its_result():
    calls = []
    results = on_ranks(lambda ranks: ranks.on_main(lambda x: calls.append(ranks.rank) or x + ranks.rank, 10))
    assert calls == [0] and results == [10, 10]
