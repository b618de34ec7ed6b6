"""Tests of bench.loadgen on virtual time: schedules, open loop, drops, abandonment, HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from bench.loadgen import (
    LoadResult,
    LoadSpec,
    RequestResult,
    RequestStatus,
    Target,
    arrival_offsets_s,
    classify_http,
    run_load,
)
from bench.virtual import run_virtual

OK = RequestResult(RequestStatus.OK, coverage=1.0)


def _run(target: Target, spec: LoadSpec) -> LoadResult:
    async def main() -> LoadResult:
        loop = asyncio.get_running_loop()
        return await run_load(target, spec, now_s=loop.time)

    return run_virtual(main)


def _sleeper(latency_s: float) -> Target:
    async def target(index: int) -> RequestResult:
        await asyncio.sleep(latency_s)
        return OK

    return target


# -- schedules --------------------------------------------------------------------------------


def test_constant_arrivals_are_evenly_spaced() -> None:
    """Constant arrivals at 100/s are exactly 10 ms apart, rate x duration of them."""
    offsets = arrival_offsets_s(LoadSpec(rate_per_s=100, duration_s=2, arrivals="constant"))
    assert len(offsets) == 200
    assert np.allclose(np.diff(offsets), 0.01)


def test_poisson_arrivals_are_seeded_and_near_the_rate() -> None:
    """Poisson arrivals repeat for a seed, differ across seeds, and average the offered rate."""
    spec = LoadSpec(rate_per_s=1000, duration_s=10)
    a, b = arrival_offsets_s(spec), arrival_offsets_s(spec)
    assert np.array_equal(a, b)
    other = arrival_offsets_s(LoadSpec(rate_per_s=1000, duration_s=10, seed=2))
    assert not np.array_equal(a[:100], other[:100])
    assert 9500 <= len(a) <= 10500
    assert a[0] == 0.0
    assert a[-1] < 10.0
    gaps = np.diff(a)
    # Exponential gaps: the standard deviation equals the mean.
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)


def test_schedule_is_bounded_by_max_requests() -> None:
    """``max_requests`` caps the schedule whatever the rate and duration."""
    spec = LoadSpec(rate_per_s=1000, duration_s=100, max_requests=50)
    assert len(arrival_offsets_s(spec)) == 50


@pytest.mark.parametrize(
    ("field", "value"),
    [("rate_per_s", 0), ("duration_s", -1), ("max_inflight", 0), ("warmup_s", 5.0)],
)
def test_invalid_spec_is_rejected(field: str, value: float) -> None:
    """A non-positive rate, duration or bound, or a warm-up as long as the run, raises."""
    kwargs = {"rate_per_s": 10.0, "duration_s": 5.0, field: value}
    with pytest.raises(ValueError, match=field):
        LoadSpec(**kwargs)  # type: ignore[arg-type]


# -- open loop --------------------------------------------------------------------------------


def test_latency_is_the_targets_time_on_virtual_time() -> None:
    """A target taking exactly 10 ms is reported at 10 ms, with no lag and no drops."""
    result = _run(_sleeper(0.010), LoadSpec(rate_per_s=200, duration_s=2, arrivals="constant"))
    s = result.latency.summary()
    assert s.count == 400
    assert s.p50_ms == pytest.approx(10.0, abs=0.01)
    assert s.max_ms == pytest.approx(10.0, abs=0.01)
    assert result.lag.max_ms == 0.0
    assert result.kept_rate
    assert result.count(RequestStatus.OK) == 400


def test_a_request_ends_when_its_target_says_the_answer_was_complete() -> None:
    """A target reporting its answer complete 4 ms into a 10 ms call (on the run's clock) is
    timed at 4 ms; a completion time outside the call (another clock) is ignored."""

    async def target(index: int) -> RequestResult:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        await asyncio.sleep(0.010)
        completed_s = started_s + 0.004 if index % 2 == 0 else started_s + 123.0
        return RequestResult(RequestStatus.OK, coverage=1.0, completed_s=completed_s)

    result = _run(target, LoadSpec(rate_per_s=100, duration_s=1, arrivals="constant"))
    assert result.latency_s[0::2] == pytest.approx(0.004)
    assert result.latency_s[1::2] == pytest.approx(0.010)
    assert result.service.max_ms == pytest.approx(10.0, abs=0.01)


def test_a_slow_request_does_not_delay_later_sends() -> None:
    """Open loop: one request taking 1 s does not hold back the ones scheduled after it."""

    async def target(index: int) -> RequestResult:
        await asyncio.sleep(1.0 if index == 5 else 0.001)
        return OK

    result = _run(target, LoadSpec(rate_per_s=100, duration_s=1, arrivals="constant"))
    assert result.lag.max_ms == 0.0
    assert result.latency.max_ms == pytest.approx(1000.0, rel=1e-3)
    assert result.latency.percentile_ms(50) == pytest.approx(1.0, abs=0.01)
    # The slow one is in the per-request record at its own index.
    assert result.latency_s[5] == pytest.approx(1.0)


def test_sends_over_the_inflight_bound_are_dropped_and_counted() -> None:
    """With max_inflight requests hung, further sends are dropped and counted, never queued."""

    async def hang(index: int) -> RequestResult:
        await asyncio.get_running_loop().create_future()
        return OK

    spec = LoadSpec(rate_per_s=100, duration_s=1, arrivals="constant", max_inflight=10, drain_s=2.0)
    result = _run(hang, spec)
    assert result.dropped == 90
    assert result.count(RequestStatus.ABANDONED) == 10
    assert not result.kept_rate
    assert any("dropped" in p for p in result.rate_problems())


def test_abandoned_requests_count_with_a_lower_bound_latency() -> None:
    """Requests still running after the drain are cancelled and recorded with the time they
    had waited, so they show in the tail instead of vanishing."""
    cancelled = []

    async def slow(index: int) -> RequestResult:
        try:
            await asyncio.sleep(100.0)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return OK

    spec = LoadSpec(rate_per_s=10, duration_s=1, arrivals="constant", drain_s=3.0)
    result = _run(slow, spec)
    assert sorted(cancelled) == list(range(10))
    assert result.count(RequestStatus.ABANDONED) == 10
    # The first request waited through the 0.9 s of sends plus the 3 s drain.
    assert result.latency.max_ms == pytest.approx(3900.0, rel=1e-3)
    assert result.latency.min_ms == pytest.approx(3000.0, rel=1e-3)


def test_a_failing_target_becomes_an_error_with_its_reason() -> None:
    """An exception from the target is an error result named by its type, not a crash."""

    async def boom(index: int) -> RequestResult:
        raise RuntimeError("no")

    result = _run(boom, LoadSpec(rate_per_s=10, duration_s=1, arrivals="constant"))
    assert result.count(RequestStatus.ERROR) == 10
    assert result.reasons == {"RuntimeError": 10}


def test_warmup_requests_are_not_reported() -> None:
    """Requests intended during the warm-up are kept per request but not in the figures."""
    spec = LoadSpec(rate_per_s=100, duration_s=2, warmup_s=1.0, arrivals="constant")
    result = _run(_sleeper(0.005), spec)
    assert result.scheduled == 200
    assert result.latency.count == 100
    assert int(result.measured.sum()) == 100


def test_coverage_and_extra_requests_are_recorded() -> None:
    """Partial answers keep their coverage; extra requests add up."""

    async def partial(index: int) -> RequestResult:
        await asyncio.sleep(0.001)
        return RequestResult(RequestStatus.PARTIAL, coverage=0.5, extra_requests=2)

    result = _run(partial, LoadSpec(rate_per_s=10, duration_s=1, arrivals="constant"))
    assert result.count(RequestStatus.PARTIAL) == 10
    assert np.nanmean(result.coverage) == 0.5
    assert result.extra_requests == 20


# -- HTTP classification ----------------------------------------------------------------------


def test_classify_complete_and_partial_answers() -> None:
    """200 bodies give coverage, partial flag, extra attempts and the server's own time."""
    body = (
        b'{"partial": true, "completeness": {"coverage": 0.75}, "took_ms": 98.5,'
        b' "shards": [{"attempts": 2}, {"attempts": 1}, {"attempts": 3}]}'
    )
    r = classify_http(200, body)
    assert r.status is RequestStatus.PARTIAL
    assert r.coverage == 0.75
    assert r.extra_requests == 3
    assert r.server_ms == 98.5
    ok = classify_http(200, b'{"partial": false, "completeness": {"coverage": 1.0}}')
    assert ok.status is RequestStatus.OK
    assert ok.server_ms is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, b'{"error": {"type": "Overloaded", "reason": "x"}}', RequestStatus.SHED),
        (429, b"", RequestStatus.SHED),
        (503, b'{"error": {"type": "NoShardAnswered", "reason": "x"}}', RequestStatus.ERROR),
        (504, b"", RequestStatus.TIMEOUT),
        (500, b"oops", RequestStatus.ERROR),
        (200, b"not json", RequestStatus.ERROR),
        (200, b'{"completeness": {}}', RequestStatus.ERROR),
    ],
)
def test_classify_failures(status: int, body: bytes, expected: RequestStatus) -> None:
    """Shed, no-shard-answered, timeouts, server errors and malformed bodies are told apart."""
    assert classify_http(status, body).status is expected


class StartsAtOnceTarget:
    """Starts every request at once (no task), ending it ``latency_s`` later by a loop
    callback; request 3 never ends. Awaiting it is never needed."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.awaited = 0

    def try_start(self, index: int, done: Callable[[RequestResult], None]) -> bool:
        if index != 3:
            asyncio.get_running_loop().call_later(self.latency_s, done, OK)
        return True

    async def __call__(self, index: int) -> RequestResult:
        self.awaited += 1
        return OK


def test_a_target_that_starts_at_once_runs_without_tasks() -> None:
    """Requests started by try_start are timed, bounded and drained like awaited ones; one
    that never ends is abandoned at the drain with its wait as a lower bound."""
    target = StartsAtOnceTarget(0.010)
    spec = LoadSpec(rate_per_s=100, duration_s=1, arrivals="constant", drain_s=0.5)
    result = _run(target, spec)
    assert target.awaited == 0
    assert result.count(RequestStatus.OK) == 99
    assert result.count(RequestStatus.ABANDONED) == 1
    assert result.status[3] == RequestStatus.ABANDONED
    assert result.latency_s[3] >= 0.5
    ok = result.latency_s[result.status == RequestStatus.OK]
    assert ok == pytest.approx(0.010)


def test_requests_started_at_once_count_against_the_inflight_bound() -> None:
    """max_inflight bounds requests started without a task too: the excess is dropped."""
    target = StartsAtOnceTarget(1.0)
    spec = LoadSpec(rate_per_s=100, duration_s=0.5, arrivals="constant", max_inflight=10)
    result = _run(target, spec)
    assert result.count(RequestStatus.DROPPED) == 40
    assert result.count(RequestStatus.OK) == 9  # request 3 never ends
