"""The top-K score cache through the command line: resume after SIGKILL, and torchrun sharding."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from distill.cli import main
from teacher.topk import DIRECTIONS
from tests.conftest import tiny_config_dict

ARRAYS = [f"{d}_{what}" for d in DIRECTIONS for what in ("candidates", "scores")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run with a teacher and a baseline student (the first stage), and its top-5 cache made by one process."""
    root = tmp_path_factory.mktemp("topk")
    cfg = tiny_config_dict(root / "run", root / "data")
    cfg["experiment"] = {"seeds": [0]}
    cfg["scores"] = {"top_k": 5, "shard_queries": 16}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    for stage in (["data"], ["teacher", "fit"], ["distill", "--variant", "baseline"],
                  ["teacher", "score", "--cache", "top-k"]):
        assert main([*stage, str(root / "tiny.yaml")]) == 0
    run = root / "run"
    return run, {name: np.load(run / "scores" / "train-topk" / f"{name}.npy") for name in ARRAYS}


def cache_arrays(run):
    return {name: np.load(run / "scores" / "train-topk" / f"{name}.npy") for name in ARRAYS}


def command(run, *extra):
    return ["teacher", "score", "--run-dir", str(run), "--cache", "top-k", *extra]


def test_the_cache_is_made_from_the_baseline_student(run):
    run, arrays = run
    manifest = yaml.safe_load((run / "scores" / "train-topk" / "manifest.json").read_text())
    assert manifest["k"] == 5 and manifest["candidate_generator"]["kind"] == "student"
    assert manifest["generator_path"].endswith("baseline-seed0") and manifest["precision"] == "float32"
    assert arrays["t2i_scores"].shape == (240, 5) and arrays["i2t_candidates"].shape == (48, 5)


def test_a_killed_scoring_run_resumes_and_ends_with_the_same_cache(run, caplog):
    run, _ = run
    reference_args = command(run, "--force", "--set", "scores.shard_queries=1")
    assert main(reference_args) == 0  # one query per part: many parts to be killed among
    reference = cache_arrays(run)
    cache, partial = run / "scores" / "train-topk", run / "scores" / "train-topk.partial"
    shutil.rmtree(cache)
    proc = subprocess.Popen([sys.executable, "-m", "distill", *command(run, "--set", "scores.shard_queries=1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 300
    while len(list(partial.glob("parts/*.npy"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "scoring ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cache.exists(), "the run finished before the kill landed"
    done_before = len(list(partial.glob("parts/*.npy")))
    caplog.set_level("INFO", logger="itr_distill")
    assert main(command(run, "--set", "scores.shard_queries=1")) == 0
    assert f"resuming, {done_before} of 288 parts already scored" in caplog.text
    assert not partial.exists()
    for name, value in cache_arrays(run).items():
        np.testing.assert_array_equal(value, reference[name], err_msg=name)


def test_two_torchrun_processes_make_the_one_process_cache(run):
    run, single = run
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "distill", *command(run, "--force", "--set", "scores.shard_queries=16")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 of 2: scored 9 parts" in done.stderr and "rank 0 of 2: scored 9 parts" in done.stderr
    for name, value in cache_arrays(run).items():
        np.testing.assert_array_equal(value, single[name], err_msg=name)
