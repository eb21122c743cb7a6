"""A training killed with SIGKILL at random moments and resumed ends exactly as the run left alone."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distill.cli import main
from tests.conftest import tiny_config_dict

KILLS = 10
# The run's lexical caption-level batches with the default DataLoader workers; image-level epochs
# (`train.sampling: image`, lexical groups) from two workers, killed half as often (a fifth of the steps).
INPUTS = {"captions": ["--set", "student.train.sampling=caption"],
          "images-2-workers": ["--set", "student.train.sampling=image", "--set", "student.train.num_workers=2"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose student trains its towers with every loss term, the momentum encoder, queues,
    bank, memory banks (re-clustered each epoch), local space and self-guided pooling on, and lexical
    batches (their NumPy generator is part of the data order)."""
    root = tmp_path_factory.mktemp("resume")
    cfg = tiny_config_dict(root / "run", root / "data")
    cfg["experiment"] = {"seeds": [0]}
    cfg["student"]["momentum"] = {"queue_size": 24, "token_queue_size": 64}
    cfg["student"].update(memory_bank={"slots": 4}, hierarchy={"local_dim": 8}, self_guided={"attention_dim": 8})
    cfg["student"]["losses"]["guided"] = {"weight": 0.5}
    cfg["student"]["train"] = {"epochs": 4, "batch_size": 8, "warmup_steps": 2, "batching": "lexical",
                               "select": "best_val", "keep_checkpoints": 1}
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    for stage in (["data"], ["teacher", "fit"], ["distill", "--variant", "baseline"], ["teacher", "score"],
                  ["teacher", "score", "--cache", "top-k"]):
        assert main([*stage, str(root / "tiny.yaml")]) == 0
    return root / "run"


def _distill(run, log, *extra: str) -> subprocess.Popen:
    """`itr-distill distill` in a child process whose messages go to `log`."""
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "distill", "distill", "--run-dir", str(run), *extra],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"})


def _started(child: subprocess.Popen, log) -> float:
    """Wait until the child has imported everything and logs its first message (the stage starting)."""
    while child.poll() is None and log.stat().st_size == 0:
        time.sleep(0.01)
    return time.perf_counter()


def _finished(student) -> tuple[dict[str, torch.Tensor], list[dict]]:
    history = json.loads((student / "training.json").read_text())["history"]
    return load_file(str(student / "model.safetensors")), [{k: h[k] for k in ("epoch", "steps", "loss", "val")} for h in history]


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_killed_and_resumed_training_ends_with_the_uninterrupted_weights_and_metrics(run, tmp_path, inputs):
    student, log = run / "students" / "distilled-seed0", tmp_path / "stderr.txt"
    alone, kills_wanted = _distill(run, log, *INPUTS[inputs]), KILLS if inputs == "captions" else KILLS // 2
    started = _started(alone, log)
    assert alone.wait() == 0, log.read_text()[-3000:]
    duration = time.perf_counter() - started  # building the student, its caches and bank, and training
    weights, history = _finished(student)
    assert {"lexical", "guided", "cached_kd", "concept"} <= set(history[0]["loss"])
    assert history[0]["steps"] == (240 if inputs == "captions" else 48) // 8  # an epoch of captions or of images
    assert float(weights["memory.filled"]) == 1.0 and weights["memory.image_bank"].abs().sum() > 0
    log_alone = (student / "train_log.jsonl").read_text().splitlines()
    shutil.rmtree(student)

    rng, kills = random.Random(), 0
    while True:
        attempt = _distill(run, log, "--resume", *INPUTS[inputs])
        try:
            _started(attempt, log)
            attempt.wait(timeout=rng.uniform(0, duration) if kills < kills_wanted else None)
        except subprocess.TimeoutExpired:
            attempt.send_signal(signal.SIGKILL)
            attempt.wait()
            kills += 1
            continue
        assert attempt.returncode == 0, log.read_text()[-3000:]
        if kills >= kills_wanted:
            break
        shutil.rmtree(student)  # it finished before its kill: train again from nothing
    resumed_weights, resumed_history = _finished(student)
    assert resumed_history == history
    assert resumed_weights.keys() == weights.keys()
    for name in weights:
        assert torch.equal(resumed_weights[name], weights[name]), name
    log_resumed = (student / "train_log.jsonl").read_text().splitlines()
    def strip(lines):
        return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in lines]
    assert strip(log_resumed) == strip(log_alone)  # one line per step and epoch, none twice, none torn
