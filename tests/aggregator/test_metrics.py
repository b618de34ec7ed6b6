"""Service metrics: recent latency windows, outcome counts, per-instance registries, loop lag."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from aggregator import Deadline, ManualClock, OutcomeStatus, ShardOutcome
from aggregator.admission import AdmissionLimits, AdmissionQueue
from aggregator.metrics import LoopLagMonitor, RecentLatencies, ServiceMetrics


def _text(metrics: ServiceMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_recent_latencies_keep_only_the_window() -> None:
    """The ring keeps the newest values only, and percentiles are nearest-rank over them."""
    recent = RecentLatencies(window=100)
    assert recent.percentiles_ms() == []
    for value in range(1, 201):  # 1..200 ms; only 101..200 stay
        recent.record_ms(float(value))
    assert len(recent) == 100
    assert recent.percentiles_ms((0.0, 50.0, 99.0, 100.0)) == [101.0, 150.0, 199.0, 200.0]


def test_recent_latencies_reject_an_empty_window() -> None:
    """A window must hold at least one value."""
    with pytest.raises(ValueError, match="window"):
        RecentLatencies(window=0)


def test_outcomes_are_counted_and_timed_per_shard() -> None:
    """Each outcome counts once by status; skipped shards are not timed; strangers are ignored."""
    metrics = ServiceMetrics(["a", "b"], shard_urls={"a": "http://127.0.0.1:1"})
    metrics.observe_outcomes(
        [
            ShardOutcome("a", OutcomeStatus.OK, 4.0),
            ShardOutcome("b", OutcomeStatus.TIMEOUT, 100.0),
            ShardOutcome("b", OutcomeStatus.SKIPPED, 0.0),
            ShardOutcome("zzz", OutcomeStatus.OK, 1.0),
        ]
    )
    summaries = {s["name"]: s for s in metrics.shard_summaries()}
    assert summaries["a"]["url"] == "http://127.0.0.1:1"
    assert summaries["b"]["url"] is None
    assert summaries["a"]["outcomes"]["ok"] == 1
    assert summaries["b"]["outcomes"] == {
        "ok": 0, "timeout": 1, "error": 0, "rejected": 0, "skipped": 1,
    }  # fmt: skip
    assert summaries["b"]["recent"]["calls"] == 1
    assert summaries["b"]["recent"]["p50_ms"] == 100.0
    text = _text(metrics)
    assert 'aggregator_shard_outcomes_total{shard="b",status="skipped"} 1.0' in text
    assert 'aggregator_shard_latency_seconds_count{shard="b"} 1.0' in text
    assert 'aggregator_shard_latency_seconds_sum{shard="b"} 0.1' in text
    assert "zzz" not in text


def test_every_shard_series_exists_before_any_query() -> None:
    """Series start at zero for every shard and status, so dashboards see them from the start."""
    text = _text(ServiceMetrics(["only"]))
    assert 'aggregator_shard_outcomes_total{shard="only",status="error"} 0.0' in text
    assert 'aggregator_shard_latency_seconds_count{shard="only"} 0.0' in text


def test_admission_figures_are_read_at_scrape_time() -> None:
    """In-flight, waiting and shed figures come straight from the admission queue."""
    clock = ManualClock()
    queue = AdmissionQueue(AdmissionLimits(max_in_flight=1, max_waiting=1), clock)
    metrics = ServiceMetrics(["a"], admission=queue)
    far = Deadline.after(0.0, 60_000)
    for _ in range(3):
        queue.arrive("c", far)
    text = _text(metrics)
    assert "aggregator_queries_in_flight 1.0" in text
    assert "aggregator_queries_waiting 1.0" in text
    assert 'aggregator_queries_shed_total{reason="queue_full"} 1.0' in text
    assert "aggregator_queries_admitted_total 1.0" in text
    assert "aggregator_admission_limit 1.0" in text


def test_registries_are_per_instance() -> None:
    """Two ServiceMetrics never share series (no process-global registry)."""
    first, second = ServiceMetrics(["a"]), ServiceMetrics(["a"])
    first.observe_response(200, 0.01)
    assert 'aggregator_http_responses_total{code="200"}' in _text(first)
    assert 'aggregator_http_responses_total{code="200"}' not in _text(second)


def test_loop_lag_samples_feed_the_histogram_and_the_maximum() -> None:
    """Each lag sample lands in the histogram and raises the running maximum."""
    metrics = ServiceMetrics(["a"])
    metrics.observe_loop_lag(0.003)
    metrics.observe_loop_lag(0.001)
    assert metrics.max_loop_lag_s == 0.003
    assert "aggregator_event_loop_lag_seconds_count 2.0" in _text(metrics)


@pytest.mark.looptime
async def test_lag_monitor_samples_every_interval_until_cancelled() -> None:
    """One sample per interval (zero lag on an idle loop); cancelling stops the monitor."""
    samples: list[float] = []
    busy: list[float] = []

    def record(lag_s: float, busy_share: float) -> None:
        samples.append(lag_s)
        busy.append(busy_share)

    monitor = LoopLagMonitor(record, interval_s=0.1)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(1.05)
    task.cancel()
    await asyncio.wait((task,))
    assert task.cancelled()
    assert len(samples) == monitor.samples == 10
    assert samples == pytest.approx([0.0] * 10, abs=1e-9)
    assert all(0.0 <= b <= 1.0 for b in busy)


def test_lag_monitor_rejects_a_zero_interval() -> None:
    """A monitor needs a positive interval."""
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(lambda lag, busy: None, interval_s=0.0)
