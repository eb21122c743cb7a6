"""Per-stage resource records: wall time, peak anonymous and resident memory, bytes written, teacher pairs,
and the CPU's matrix-product rate measured as the stage ends (`core.machine.matmul_gflops`).

Peak anonymous memory (RssAnon) is what a stage really holds: pages of memory-mapped files (RssFile)
count in VmRSS but the kernel can drop them, so a stage reading a big mmapped .npy looks large in
VmRSS without needing that memory. Figures are of this process only (torchrun ranks each record
their own). Memory peaks are sampled, so a spike shorter than the interval can be missed (VmRSS's
peak also uses the kernel's VmHWM when it rose during the stage). Off Linux (no /proc) only wall
time, and the teacher-pair count, are recorded; the rest is None.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from core.io import write_json
from core.machine import machine_info, matmul_gflops

_STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def read_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM in bytes from /proc/self/status; {} where there is none."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in _STATUS_KEYS:
                    out[key] = int(value.split()[0]) * 1024  # reported in kB
    except OSError:
        return {}
    return out


def written_bytes() -> int | None:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes); None where unavailable."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("write_bytes:")), None)
    except (OSError, ValueError):
        return None


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class StageMonitor:
    """Context manager recording one stage; `record` is filled on exit, also when the block raises."""

    def __init__(self, stage: str, counter: Callable[[], int] | None = None, interval: float = 0.05) -> None:
        self.stage, self.counter, self.interval = stage, counter, interval
        self.record: dict[str, Any] = {}
        self._peak_anon: int | None = None
        self._peak_rss: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> dict[str, int]:
        status = read_status()
        self._peak_anon = _max(self._peak_anon, status.get("RssAnon"))
        self._peak_rss = _max(self._peak_rss, status.get("VmRSS"))
        return status

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> StageMonitor:
        self._count0 = self.counter() if self.counter else None
        self._written0 = written_bytes()
        self._status0 = self._sample()
        self._t0 = time.perf_counter()
        if self._status0:  # nothing to sample without /proc
            self._thread = threading.Thread(target=self._run, name=f"monitor:{self.stage}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        seconds = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        status = self._sample()
        hwm0, hwm1 = self._status0.get("VmHWM"), status.get("VmHWM")
        if hwm0 is not None and hwm1 is not None and hwm1 > hwm0:  # the kernel's exact peak, reached in-stage
            self._peak_rss = _max(self._peak_rss, hwm1)
        written, w0, c0 = written_bytes(), self._written0, self._count0
        self.record = {
            "stage": self.stage, "seconds": seconds,
            "peak_anon_bytes": self._peak_anon, "peak_rss_bytes": self._peak_rss,
            "start_anon_bytes": self._status0.get("RssAnon"),
            "written_bytes": written - w0 if written is not None and w0 is not None else None,
            "teacher_pairs": self.counter() - c0 if self.counter and c0 is not None else None,
            "matmul_gflops": matmul_gflops(),
        }
        if exc_type is not None:
            self.record["failed"] = True


class StageLog:
    """Collects stage records and rewrites `path` (atomically) after each stage, so a crash keeps the earlier ones."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stages: list[dict[str, Any]] = []
        self._machine: dict | None = None  # described once: it may run nvidia-smi

    @contextmanager
    def stage(self, name: str, counter: Callable[[], int] | None = None,
              interval: float = 0.05) -> Iterator[StageMonitor]:
        monitor = StageMonitor(name, counter, interval)
        try:
            with monitor:
                yield monitor
        finally:
            if monitor.record:  # empty only when entering failed
                self.stages.append(monitor.record)
                self.write()

    def write(self) -> None:
        if self._machine is None:
            self._machine = machine_info()
        write_json(self.path, {"machine": self._machine, "pid": os.getpid(), "stages": self.stages})
