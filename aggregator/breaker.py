"""Circuit breakers: stop sending requests to a replica that keeps failing, probe it later.

One :class:`CircuitBreaker` per replica. Closed, it counts failures (errors, rejections and
timeouts) in a sliding window; ``failure_threshold`` of them within ``window_s`` open it. Open,
it admits nothing for a cool-down; after that it is half-open and admits one probe request. A
probe that succeeds closes it; one that fails opens it again with the cool-down multiplied by
``backoff_factor`` (capped at ``max_cool_down_s``), so a replica that stays down costs one
probe per cool-down, not a stream of failed queries.

Compared with SearXNG's engine suspension (one error suspends, no probe) the threshold keeps a
single blip from removing a replica, and the probe brings it back without a restart.

Pure: the breaker reads the injected clock and does no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from aggregator.clock import Clock

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker"]


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

    def __post_init__(self) -> None:
        if isinstance(self.failure_threshold, bool) or self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold!r}")
        if not 0 < self.window_s < math.inf:
            raise ValueError(f"window_s must be finite and > 0, got {self.window_s!r}")
        if not 0 < self.cool_down_s <= self.max_cool_down_s < math.inf:
            raise ValueError("need 0 < cool_down_s <= max_cool_down_s, both finite")
        if not 1 <= self.backoff_factor < math.inf:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")


class CircuitBreaker:
    """The breaker of one replica (see the module docstring for the rules)."""

    __slots__ = (
        "_clock",
        "_cool_down_s",
        "_failures",
        "_open_until_s",
        "_probe_in_flight",
        "_state",
        "config",
        "opened",
    )

    def __init__(self, clock: Clock, config: BreakerConfig | None = None) -> None:
        self._clock = clock
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._failures: deque[float] = deque()
        self._open_until_s = -math.inf
        self._cool_down_s = self.config.cool_down_s
        self._probe_in_flight = False
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

        Closed, a success changes nothing: failures count within the window regardless, so
        a replica failing one request in three still trips. Open, a success from a request
        sent before it opened is ignored.
        """
        if self._state is not BreakerState.HALF_OPEN:
            return
        self._state = BreakerState.CLOSED
        self._failures.clear()
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
        failures = self._failures
        failures.append(now_s)
        horizon_s = now_s - self.config.window_s
        while failures and failures[0] <= horizon_s:
            failures.popleft()
        if len(failures) >= self.config.failure_threshold:
            self._open(now_s, self.config.cool_down_s)

    def record_abandoned(self) -> None:
        """A request ended without a verdict (cancelled early): a probe slot is freed."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self, now_s: float, cool_down_s: float) -> None:
        self._state = BreakerState.OPEN
        self._cool_down_s = cool_down_s
        self._open_until_s = now_s + cool_down_s
        self._failures.clear()
        self._probe_in_flight = False
        self.opened += 1

    def snapshot(self) -> dict[str, object]:
        """State, failures in the window, cool-down and open count, as plain values."""
        now_s = self._clock.now_s()
        state = self.state
        return {
            "state": state.value,
            "recent_failures": len(self._failures),
            "cool_down_s": self._cool_down_s,
            "open_for_s": max(0.0, self._open_until_s - now_s)
            if state is BreakerState.OPEN
            else 0.0,
            "opened": self.opened,
        }
