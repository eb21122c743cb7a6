"""StageMonitor / StageLog: anonymous vs file-backed peaks, bytes written, counter, failure, JSON log."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

from core.resources import StageLog, StageMonitor, read_status, written_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not read_status(),
                                 reason="needs Linux /proc/self/status")

MiB = 2**20
SIZE = 256 * MiB


def test_read_status_has_the_fields():
    status = read_status()
    assert set(status) >= {"VmRSS", "RssAnon", "RssFile", "VmHWM"}
    assert status["VmRSS"] >= status["RssAnon"] > 0


def test_touched_array_raises_anonymous_and_resident_peaks():
    with StageMonitor("alloc") as m:
        a = np.ones(SIZE, dtype=np.uint8)  # ones, not zeros: every page is written
        time.sleep(0.25)  # freed inside the block: only the sampling thread can see the peak
        del a
    r = m.record
    assert r["peak_anon_bytes"] >= r["start_anon_bytes"] + 200 * MiB
    assert r["peak_rss_bytes"] >= r["start_anon_bytes"] + 200 * MiB
    assert r["seconds"] > 0 and "failed" not in r


def test_mmapped_file_raises_resident_but_not_anonymous_peak(tmp_path):
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(SIZE // 4,))
    out[:] = 1.0
    out.flush()
    del out
    rss0 = read_status()["VmRSS"]
    with StageMonitor("mmap read") as m:
        arr = np.load(path, mmap_mode="r")
        total = float(arr.sum(dtype=np.float64))  # touches every page of the mapping
        time.sleep(0.25)
        del arr
    assert total == SIZE // 4
    r = m.record
    assert r["peak_rss_bytes"] >= rss0 + 200 * MiB
    assert r["peak_anon_bytes"] < r["start_anon_bytes"] + 64 * MiB


@pytest.mark.skipif(written_bytes() is None, reason="no /proc/self/io")
def test_written_bytes_counts_a_synced_file(tmp_path):
    data = os.urandom(8 * MiB)
    with StageMonitor("write") as m:
        with open(tmp_path / "out.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    assert m.record["written_bytes"] >= len(data)


def test_counter_difference_is_recorded():
    n = [5]
    with StageMonitor("teacher fit", counter=lambda: n[0]) as m:
        n[0] += 37
    assert m.record["teacher_pairs"] == 37
    with StageMonitor("no counter") as m:
        pass
    assert m.record["teacher_pairs"] is None


def test_failure_still_records_and_stops_the_thread():
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with StageMonitor("boom", interval=0.01) as m:
            assert threading.active_count() == before + 1
            raise RuntimeError("stage failed")
    assert m.record["failed"] is True and m.record["stage"] == "boom"
    assert m.record["peak_rss_bytes"] > 0
    assert threading.active_count() == before


def test_stage_log_writes_both_stages(tmp_path):
    path = tmp_path / "resources.json"
    log = StageLog(path)
    n = [0]
    with log.stage("data"):
        pass
    assert len(json.loads(path.read_text())["stages"]) == 1  # rewritten after each stage
    with log.stage("teacher fit", lambda: n[0]):
        n[0] += 3
    doc = json.loads(path.read_text())
    assert [s["stage"] for s in doc["stages"]] == ["data", "teacher fit"]
    assert doc["stages"][1]["teacher_pairs"] == 3
    assert doc["pid"] == os.getpid() and "cpu" in doc["machine"]
