"""``bench http``'s rate ladder: climb geometrically, retry a first failure, then bisect."""

from __future__ import annotations

import math

from bench.http import BenchConfig, Step, _Ladder


def _step(rate: float, passed: bool) -> Step:
    return Step("s", rate, 1.0, 1.0, 1.0, 1.0, rate, [], passed)


def _ladder(max_rate: float = 10_000.0) -> _Ladder:
    config = BenchConfig(start_rate=100.0, growth=2.0, max_rate=max_rate)
    return _Ladder("s", "http://127.0.0.1:1/search", False, config, config.start_rate)


def test_climbs_then_retries_once_then_bisects_to_the_knee() -> None:
    """Passes double the rate; one failure is retried; a second ends the climb; bisection
    narrows between the best pass and the lowest failure."""
    ladder = _ladder()
    ladder.record(_step(100, True))
    ladder.record(_step(200, True))
    assert ladder.rate == 400
    ladder.record(_step(400, False))
    assert (ladder.rate, ladder.retried, math.isinf(ladder.worst_fail)) == (400, True, True)
    ladder.record(_step(400, False))
    assert (ladder.best, ladder.worst_fail, ladder.rate) == (200, 400, 300)
    ladder.record(_step(300, True))
    assert (ladder.best, ladder.rate, ladder.done) == (300, 350, False)
    ladder.record(_step(350, False))
    assert (ladder.best, ladder.worst_fail, ladder.done) == (300, 350, True)


def test_a_noise_spike_does_not_end_the_climb() -> None:
    """A failure followed by a pass at the same rate keeps climbing."""
    ladder = _ladder()
    ladder.record(_step(100, False))
    ladder.record(_step(100, True))
    assert (ladder.best, ladder.rate, ladder.retried) == (100, 200, False)


def test_the_climb_stops_at_the_maximum_rate() -> None:
    """A service that passes everything stops at max_rate, its best being the last pass."""
    ladder = _ladder(max_rate=300.0)
    ladder.record(_step(100, True))
    ladder.record(_step(200, True))
    assert ladder.done
    assert ladder.best == 200
