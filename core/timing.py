"""Timing: warm-up, then one timed call per repetition, summarised as percentiles."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def summarize(times_ms: list[float]) -> dict[str, float]:
    """p50/p90/p95/p99 (linear interpolation between order statistics), mean, min, max, in milliseconds."""
    if not times_ms:
        raise ValueError("no timings to summarise")
    arr = np.asarray(times_ms, dtype=np.float64)
    return {
        **{f"p{q}_ms": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)},
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "n": int(arr.size),
    }


def time_calls(fn: Callable[[int], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None,
               budget_s: float | None = None) -> dict[str, float]:
    """Call `fn(i)` `warmup` times, then `repeats` times timed; `sync` waits for a device.

    The first warm-up call is timed on its own as `first_call_ms` (cold: allocation, compilation,
    graph capture). With `budget_s`, slow calls get fewer warm-up calls and fewer repetitions (at
    least 3), about `budget_s` seconds' worth each, so one benchmark can span microseconds and seconds.
    """
    def timed(i: int) -> float:
        start = time.perf_counter_ns()
        fn(i)
        if sync:
            sync()
        return (time.perf_counter_ns() - start) / 1e6

    first = timed(0) if warmup else None
    for i in range(1, warmup):
        if budget_s is not None and first * i > budget_s:
            break  # slow calls: warming up further would cost more than the measurement
        fn(i)
    if sync:
        sync()
    if budget_s is not None and first is not None:
        repeats = int(max(3, min(repeats, budget_s * 1000 / max(first, 1e-3))))
    out = summarize([timed(i) for i in range(repeats)])
    return out if first is None else {**out, "first_call_ms": first}
