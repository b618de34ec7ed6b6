"""Circuit breakers: stop sending requests to a replica that keeps failing, probe it later.

One :class:`CircuitBreaker` per replica. Closed, it counts requests and failures (errors,
rejections and timeouts) over a sliding window of ``window_s``; it opens when the last
``failure_threshold`` requests all failed, or when the window holds at least
``failure_threshold`` failures *and* they are at least ``failure_rate`` of the requests.
Open, it admits nothing for a cool-down; after that it is half-open and admits one probe
request. A probe that succeeds closes it; one that fails opens it again with the
cool-down multiplied by ``backoff_factor`` (capped at ``max_cool_down_s``), so a replica that
stays down costs one probe per cool-down, not a stream of failed queries.

Why a rate and not a bare count: a healthy replica serving many requests with a heavy tail
times out now and then (1% of requests past a tight deadline is 5 timeouts in 10 s at 50
requests/s), and a count threshold would open its breaker every few seconds; with both
copies of a shard open, the shard would be skipped although nothing is wrong with it. This
is the rule of Hystrix and resilience4j (error percentage over a minimum volume).

Why also a run of failures: a replica that dies after serving for a while has a window full
of its earlier successes, and the rate needs as many failures again to reach 50%: measured
over sockets, a killed replica took 123 requests and 4.6 s to trip, or did not trip in 5 s.
``failure_threshold`` failures in a row (Finagle's failure accrual, Envoy's consecutive 5xx)
trip it at once, and a healthy replica with 1% of timeouts does that once in 10^10 runs.
Compared with SearXNG's engine suspension (one error suspends, no probe) it keeps a blip
from removing a replica, and the probe brings it back without a restart.

Pure: the breaker reads the injected clock and does no I/O; its memory is a fixed ring of
time buckets, whatever the request rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from aggregator.clock import Clock

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker"]


#: Buckets the sliding window is split into (its time resolution is window_s / _BUCKETS).
_BUCKETS = 10


class BreakerState(StrEnum):
    """Where a breaker stands."""

    #: Requests flow; failures are being counted.
    CLOSED = "closed"
    #: No requests until the cool-down ends.
    OPEN = "open"
    #: Cool-down over: one probe request may go (or is on its way).
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds of a circuit breaker. Times in seconds."""

    failure_threshold: int = 5
    window_s: float = 10.0
    cool_down_s: float = 1.0
    max_cool_down_s: float = 30.0
    backoff_factor: float = 2.0
    failure_rate: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.failure_threshold, bool) or self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold!r}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        if not 0 < self.window_s < math.inf:
            raise ValueError(f"window_s must be finite and > 0, got {self.window_s!r}")
        if not 0 < self.cool_down_s <= self.max_cool_down_s < math.inf:
            raise ValueError("need 0 < cool_down_s <= max_cool_down_s, both finite")
        if not 1 <= self.backoff_factor < math.inf:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")


class CircuitBreaker:
    """The breaker of one replica (see the module docstring for the rules)."""

    __slots__ = (
        "_buckets",
        "_clock",
        "_cool_down_s",
        "_open_until_s",
        "_probe_in_flight",
        "_state",
        "_streak",
        "config",
        "opened",
    )

    def __init__(self, clock: Clock, config: BreakerConfig | None = None) -> None:
        self._clock = clock
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        # The window as a ring of buckets: [bucket number, requests, failures] each.
        self._buckets: list[list[float]] = [[-1.0, 0.0, 0.0] for _ in range(_BUCKETS)]
        self._open_until_s = -math.inf
        self._cool_down_s = self.config.cool_down_s
        self._probe_in_flight = False
        self._streak = 0  # failures in a row while closed
        #: How many times this breaker has opened (closed -> open or half-open -> open).
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose cool-down is over reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock.now_s() >= self._open_until_s:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def cool_down_s(self) -> float:
        """The cool-down the breaker will use (or is using) when open, in seconds."""
        return self._cool_down_s

    def allows_request(self) -> bool:
        """May a request be sent now? Closed: yes; open: no; half-open: if no probe is out."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return not self._probe_in_flight

    def on_request(self) -> None:
        """A request was sent; in half-open state it is the probe."""
        if self.state is BreakerState.HALF_OPEN:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = True

    def record_success(self) -> None:
        """A request succeeded: a probing breaker closes (and its cool-down resets).

        Closed, it counts as a request in the window. Open, a success from a request sent
        before it opened is ignored.
        """
        if self._state is BreakerState.CLOSED:
            self._streak = 0
            self._count(self._clock.now_s(), failed=False)
            return
        if self._state is not BreakerState.HALF_OPEN:
            return
        self._state = BreakerState.CLOSED
        self._clear()
        self._cool_down_s = self.config.cool_down_s
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """A request failed (error, rejection or timeout)."""
        now_s = self._clock.now_s()
        if self._state is BreakerState.HALF_OPEN:
            # The probe failed: back off further before the next one.
            grown_s = self._cool_down_s * self.config.backoff_factor
            self._open(now_s, min(self.config.max_cool_down_s, grown_s))
            return
        if self._state is BreakerState.OPEN:
            return  # a request sent before it opened; it is already open
        self._streak += 1
        requests, failures = self._count(now_s, failed=True)
        threshold = self.config.failure_threshold
        if self._streak >= threshold or (
            failures >= threshold and failures >= self.config.failure_rate * requests
        ):
            self._open(now_s, self.config.cool_down_s)

    def record_abandoned(self) -> None:
        """A request ended without a verdict (cancelled early): a probe slot is freed."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self, now_s: float, cool_down_s: float) -> None:
        self._state = BreakerState.OPEN
        self._cool_down_s = cool_down_s
        self._open_until_s = now_s + cool_down_s
        self._clear()
        self._probe_in_flight = False
        self.opened += 1

    def _count(self, now_s: float, *, failed: bool) -> tuple[float, float]:
        """Add one request to the window; return (requests, failures) in the window."""
        width_s = self.config.window_s / _BUCKETS
        number = math.floor(now_s / width_s)
        bucket = self._buckets[number % _BUCKETS]
        if bucket[0] != number:  # a bucket last used a whole window ago: reuse it
            bucket[0], bucket[1], bucket[2] = number, 0.0, 0.0
        bucket[1] += 1
        if failed:
            bucket[2] += 1
        return self._totals(number)

    def _totals(self, number: int) -> tuple[float, float]:
        oldest = number - _BUCKETS + 1
        requests = failures = 0.0
        for start, n, f in self._buckets:
            if start >= oldest:
                requests += n
                failures += f
        return requests, failures

    def _clear(self) -> None:
        self._streak = 0
        for bucket in self._buckets:
            bucket[0], bucket[1], bucket[2] = -1.0, 0.0, 0.0

    def snapshot(self) -> dict[str, object]:
        """State, failures in the window, cool-down and open count, as plain values."""
        now_s = self._clock.now_s()
        state = self.state
        return {
            "state": state.value,
            "recent_failures": int(
                self._totals(math.floor(now_s / (self.config.window_s / _BUCKETS)))[1]
            ),
            "cool_down_s": self._cool_down_s,
            "open_for_s": max(0.0, self._open_until_s - now_s)
            if state is BreakerState.OPEN
            else 0.0,
            "opened": self.opened,
        }
