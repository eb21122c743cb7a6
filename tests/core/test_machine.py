"""core.machine: the machine description and the matrix-product yardstick stored with stage times."""
from __future__ import annotations

import torch

from core.machine import describe, machine_info, matmul_gflops
from core.resources import StageMonitor


def test_machine_info_names_the_cpu_and_the_torch_threads():
    info = machine_info()
    assert info["cpu"] and info["cpu_count"] >= 1 and info["torch_threads"] == torch.get_num_threads()
    assert info["versions"]["torch"] and info["cpu"] in describe(info)


def test_matmul_yardstick_is_a_positive_rate_and_every_stage_record_carries_one():
    assert matmul_gflops(seconds=0.05, n=128) > 0
    with StageMonitor("tiny") as monitor:
        pass
    assert monitor.record["matmul_gflops"] > 0
