import pytest

from core.timing import summarize, time_calls


def test_percentiles_use_linear_interpolation():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["p50_ms"] == 3.0
    assert s["p95_ms"] == pytest.approx(4.0 + 0.8 * 6.0)  # rank 3.8 between 4 and 10
    assert s["p90_ms"] == pytest.approx(4.0 + 0.6 * 6.0) and s["p99_ms"] == pytest.approx(4.0 + 0.96 * 6.0)
    assert s["mean_ms"] == 4.0 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0 and s["n"] == 5


def test_time_calls_counts_warmup_and_repeats():
    calls, syncs = [], []
    stats = time_calls(calls.append, warmup=2, repeats=5, sync=lambda: syncs.append(1))
    assert calls == [0, 1, 0, 1, 2, 3, 4]
    assert stats["n"] == 5 and len(syncs) == 7  # after the timed first call, after warm-up, after each repeat
    assert stats["first_call_ms"] >= 0


def test_budget_cuts_repetitions_of_slow_calls():
    import time

    stats = time_calls(lambda i: time.sleep(0.02), warmup=1, repeats=100, budget_s=0.1)
    assert 3 <= stats["n"] <= 6 and stats["first_call_ms"] >= 20
    calls = []
    slow = time_calls(lambda i: (calls.append(i), time.sleep(0.05)), warmup=10, repeats=100, budget_s=0.1)
    assert slow["n"] == 3 and len(calls) <= 3 + 3  # at most 3 warm-up calls (0.05 s each within 0.1 s) and 3 timed
    assert time_calls(lambda i: None, warmup=1, repeats=7, budget_s=10.0)["n"] == 7


def test_empty_timings_rejected():
    with pytest.raises(ValueError):
        summarize([])
