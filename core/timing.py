"""Timing: warm-up, then one timed call per repetition, summarised as percentiles."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def summarize(times_ms: list[float]) -> dict[str, float]:
    """p50/p95 (linear interpolation), mean, min, max of per-call times in milliseconds."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    arr = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "n": int(arr.size),
    }


def time_calls(fn: Callable[[int], Any], warmup: int, repeats: int,
               sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Call `fn(i)` `warmup` times untimed, then `repeats` times timed; `sync` waits for a device."""
    for i in range(warmup):
        fn(i)
    if sync:
        sync()
    times = []
    for i in range(repeats):
        start = time.perf_counter_ns()
        fn(i)
        if sync:
            sync()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return summarize(times)
