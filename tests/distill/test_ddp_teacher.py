"""Under torchrun: two gloo processes fit the one-process teacher, and `run` does each stage where it belongs."""
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.run_layout import ModelDir
from distill.checkpoints import MODEL, epoch_dir
from distill.cli import main
from tests.conftest import tiny_config_dict

# Float sums over a batch split across processes differ in their last bits (measured: <= 2e-6 here).
# SCAN's LeakyReLU attention and the hardest negative are not smooth: a last-bit difference can put
# a logit on the other side of 0 or pick another negative, after which the runs drift apart by more
# (up to ~1e-3 over 60 steps of batch 8), so the fit is kept short and the bound has headroom; the
# weights move by far more than it in the second epoch alone.
TOLERANCE = 1e-4


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "distill", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_fit_the_one_process_teacher(tmp_path):
    """Frozen towers (batch statistics cannot differ between ranks); 2 epochs of 5 steps, the second
    on the hardest negatives of the global batch; the global term makes the pooled rows part of the gather."""
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["data"]["limit_train"] = 16  # 80 captions: 5 global batches of 16
    teacher = cfg["teacher"] = dict(cfg["teacher"])  # a copy: the dict is conftest's TINY_TOWERS
    for tower in ("image_tower", "text_tower"):
        teacher[tower] = {**teacher[tower], "freeze": True}
    teacher.update(sum_violation_epochs=1, global_weight=0.5,
                   train={"epochs": 2, "batch_size": 16, "warmup_steps": 2, "batching": "random", "select": "last",
                          "keep_checkpoints": 2})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["data", str(config)]) == 0
    assert main(["teacher", "fit", str(config)]) == 0
    weights = tmp_path / "run" / "teacher" / "model.safetensors"
    single = {k: v.clone() for k, v in load_file(str(weights)).items()}  # the file is rewritten
    single_log = json.loads((tmp_path / "run" / "teacher" / "training.json").read_text())
    done = _torchrun("teacher", "fit", "--run-dir", str(tmp_path / "run"), "--force")
    assert "teacher: fitting over 2 torchrun ranks, 8 pairs of each global batch of 16 per rank" in done.stderr
    assert done.stderr.count("teacher: epoch 2 selected") == 1  # rank 0 alone validates and writes
    double = load_file(str(weights))
    first_epoch = load_file(str(epoch_dir(ModelDir(weights.parent).checkpoints, 1) / MODEL))
    trained = [k for k in single if "proj" in k or "global" in k]
    assert trained and all(not torch.allclose(first_epoch[k], double[k], atol=1e-3) for k in trained)
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=TOLERANCE, rtol=0, msg=name)
    double_log = json.loads((tmp_path / "run" / "teacher" / "training.json").read_text())
    for one, two in zip(single_log["history"], double_log["history"], strict=True):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)


def test_run_under_torchrun_does_each_rank0_stage_once(tmp_path):
    """Every rank-0-only stage logs its work once (a second execution would log it again); the
    sharded top-K scoring logs each rank's share."""
    cfg = tiny_config_dict(tmp_path / "run", tmp_path / "data")
    cfg["experiment"] = {"seeds": [0]}
    for model in ("teacher", "student"):
        cfg[model] = {**cfg[model], "train": {**cfg[model]["train"], "epochs": 1}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = _torchrun("run", str(config))
    run = tmp_path / "run"
    log = done.stderr + done.stdout
    stages = [s["stage"] for s in json.loads((run / "stages.json").read_text())["stages"]]
    assert stages == ["data", "teacher fit", "distill baseline seed 0", "teacher score train",
                      "teacher score train-topk", "distill distilled seed 0", "export", "eval", "bench"]
    once = ["generating synthetic scenes", "train: 48 images, 240 captions (", "pairs of train into", "exported distilled-seed0 fp32:",
            "report written to", "run finished in", "teacher: epoch 1 selected", "student distilled-seed0: epoch 1"]
    assert {line: log.count(line) for line in once} == {line: 1 for line in once}
    assert len(re.findall(r"teacher +rsum", log)) == 1  # eval
    assert len(re.findall(r"p50 [\d.]+ ms", log)) == len(json.loads((run / "bench" / "latency.json").read_text())["rows"])
    assert "rank 0 of 2: scored" in log and "rank 1 of 2: scored" in log
    assert (run / "report.md").is_file()


@dataclass
class _FakeRanks:
    rank: int
    world: int = 2
    from_rank0: list = field(default_factory=lambda: [[], {"from": "rank 0"}])  # the plan's problems, the summary
    barriers: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self.barriers.append(1)

    def all_objects(self, obj):
        return [obj if self.is_main else self.from_rank0.pop(0)] + [obj] * (self.world - 1)


@pytest.mark.parametrize("rank", [0, 1])
def test_run_dispatches_the_stages_by_rank(tmp_path, monkeypatch, rank):
    """Sharded stages run on every rank, the others on rank 0 alone; a barrier closes every stage;
    only rank 0 writes the config and the stage log."""
    from core.config import load_config
    from distill import pipeline

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "run", tmp_path / "data")))
    cfg = load_config(config, [])
    ranks = _FakeRanks(rank)
    monkeypatch.setattr(pipeline, "ranks_from_env", lambda **kw: ranks)
    calls = []
    for name in ("stage_data", "stage_teacher_fit", "stage_teacher_tokens", "stage_teacher_score", "stage_teacher_topk",
                 "stage_distill", "stage_export", "stage_eval", "stage_bench", "stage_report"):
        monkeypatch.setattr(pipeline, name, lambda *a, _n=name: calls.append((_n, *a[1:3])) or {"summary": _n})
    summary = pipeline.run_pipeline(cfg, "itr-distill run")
    sharded = [("stage_teacher_fit", False, False), ("stage_distill", "baseline", 0), ("stage_distill", "baseline", 1),
               ("stage_teacher_topk", "train", False), ("stage_distill", "distilled", 0),
               ("stage_distill", "distilled", 1)]
    if rank == 0:
        assert calls[:2] == [("stage_data", False), ("stage_teacher_fit", False, False)]
        assert ("stage_teacher_score", "train", False) in calls and calls[-1][0] == "stage_report"
        assert [c[0] for c in calls[-4:]] == ["stage_export", "stage_eval", "stage_bench", "stage_report"]
        assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "stages.json").is_file()
        assert summary == {"summary": "stage_report"}
    else:
        assert calls == sharded
        assert not (tmp_path / "run").exists()  # no config, no stage log
        assert summary == {"from": "rank 0"}
    assert len(ranks.barriers) == 11  # one per stage but the report
