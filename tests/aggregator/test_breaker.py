"""Circuit breaker transitions on a manual clock."""

from __future__ import annotations

import pytest

from aggregator.breaker import BreakerConfig, BreakerState, CircuitBreaker
from aggregator.clock import ManualClock


def _breaker(**kwargs: float) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    config = BreakerConfig(
        failure_threshold=int(kwargs.pop("failure_threshold", 3)),
        window_s=kwargs.pop("window_s", 10.0),
        cool_down_s=kwargs.pop("cool_down_s", 1.0),
        max_cool_down_s=kwargs.pop("max_cool_down_s", 4.0),
        backoff_factor=kwargs.pop("backoff_factor", 2.0),
    )
    return CircuitBreaker(clock, config), clock


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A function call, so the type checker does not narrow the state across transitions.
    return breaker.state


def test_opens_after_threshold_failures_within_the_window() -> None:
    """Three failures within 10 s open the breaker; it then refuses requests."""
    breaker, clock = _breaker()
    for _ in range(2):
        breaker.record_failure()
        clock.advance(1.0)
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.allows_request()
    assert breaker.opened == 1


def test_failures_older_than_the_window_do_not_count() -> None:
    """Failures spread wider than the window, each followed by a success, never reach the
    threshold."""
    breaker, clock = _breaker(window_s=2.0)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_success()
        clock.advance(1.5)
    assert _state(breaker) is BreakerState.CLOSED


def test_successes_do_not_reset_the_failure_count_while_closed() -> None:
    """A replica failing every other request still trips: failures count within the window."""
    breaker, _ = _breaker()
    for _ in range(3):
        breaker.record_failure()
        breaker.record_success()
    assert _state(breaker) is BreakerState.OPEN


def test_half_open_after_cool_down_admits_one_probe() -> None:
    """After the cool-down one probe may go; a second request waits for its verdict."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    clock.advance(0.999)
    assert not breaker.allows_request()
    clock.advance(0.001)
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allows_request()
    breaker.on_request()
    assert not breaker.allows_request()


def test_successful_probe_closes_and_resets_the_cool_down() -> None:
    """A probe that succeeds closes the breaker and the next opening starts from the base."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    clock.advance(1.0)
    breaker.on_request()
    breaker.record_failure()  # probe failed: cool-down doubles to 2 s
    assert breaker.cool_down_s == 2.0
    clock.advance(2.0)
    breaker.on_request()
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allows_request()
    breaker.record_failure()
    assert breaker.cool_down_s == 1.0


def test_failed_probes_back_off_exponentially_up_to_the_cap() -> None:
    """Each failed probe doubles the cool-down: 1, 2, 4, then capped at 4 s."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    seen = [breaker.cool_down_s]
    for _ in range(3):
        clock.advance(breaker.cool_down_s)
        assert breaker.allows_request()
        breaker.on_request()
        breaker.record_failure()
        seen.append(breaker.cool_down_s)
        assert _state(breaker) is BreakerState.OPEN
    assert seen == [1.0, 2.0, 4.0, 4.0]


def test_abandoned_probe_frees_the_probe_slot() -> None:
    """A probe cancelled without a verdict lets the next request probe instead."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    clock.advance(1.0)
    breaker.on_request()
    assert not breaker.allows_request()
    breaker.record_abandoned()
    assert breaker.allows_request()


def test_late_results_while_open_are_ignored() -> None:
    """Answers to requests sent before the breaker opened neither close nor extend it."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    breaker.record_success()
    assert _state(breaker) is BreakerState.OPEN
    breaker.record_failure()
    assert breaker.opened == 1
    clock.advance(1.0)
    assert breaker.allows_request()


def test_snapshot_is_plain_values() -> None:
    """The snapshot names the state and how long the breaker stays open."""
    breaker, clock = _breaker(failure_threshold=1)
    breaker.record_failure()
    clock.advance(0.25)
    snap = breaker.snapshot()
    assert snap["state"] == "open"
    assert snap["open_for_s"] == pytest.approx(0.75)
    assert snap["opened"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"window_s": 0.0},
        {"cool_down_s": 5.0, "max_cool_down_s": 1.0},
        {"backoff_factor": 0.5},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, float]) -> None:
    """Thresholds out of range raise ValueError when the config is built."""
    with pytest.raises(ValueError, match=r"\w"):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_occasional_failures_among_many_successes_do_not_open() -> None:
    """A healthy replica timing out on 2% of a busy stream keeps its breaker closed."""
    breaker, clock = _breaker(failure_threshold=3, window_s=10.0)
    for i in range(1000):
        clock.advance(0.01)
        if i % 50 == 0:
            breaker.record_failure()
        else:
            breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.opened == 0


def test_a_dead_replica_trips_after_the_threshold_even_after_successes() -> None:
    """Once failures dominate the window (a replica died), the breaker opens."""
    breaker, clock = _breaker(failure_threshold=3, window_s=1.0)
    for _ in range(5):
        clock.advance(0.01)
        breaker.record_success()
    for _ in range(5):
        clock.advance(0.01)
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_old_successes_leave_the_window() -> None:
    """Successes older than the window no longer dilute the failure rate."""
    breaker, clock = _breaker(failure_threshold=3, window_s=1.0)
    for _ in range(100):
        breaker.record_success()
    clock.advance(2.0)
    for _ in range(3):
        clock.advance(0.01)
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_failure_rate_is_validated() -> None:
    """A failure rate outside (0, 1] is rejected."""
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerConfig(failure_rate=0.0)


def test_a_run_of_failures_trips_a_replica_whose_window_is_full_of_successes() -> None:
    """After 1,000 successes in the window, three failures in a row open the breaker at once
    (the rate alone would need a thousand failures)."""
    breaker, clock = _breaker(failure_threshold=3, window_s=10.0)
    for _ in range(1000):
        clock.advance(0.001)
        breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_a_success_breaks_the_run_of_failures() -> None:
    """Two failures, a success, two failures: no run of three, and the rate is under 50%
    of a busy window, so the breaker stays closed."""
    breaker, clock = _breaker(failure_threshold=3, window_s=10.0)
    for _ in range(100):
        breaker.record_success()
    for verdict in ["fail", "fail", "ok", "fail", "fail", "ok"]:
        clock.advance(0.001)
        if verdict == "fail":
            breaker.record_failure()
        else:
            breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
