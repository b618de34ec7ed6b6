"""When to send a backup copy of a shard request, and how many backups may be sent at all.

A hedge delay says how long the first copy may be outstanding before a backup goes to another
replica: fixed, or a rolling percentile of that shard's recent latency (Finagle's
``BackupRequestFilter``; The Tail at Scale hedges at the p95). :class:`BackupBudget` caps the
backups (hedges and retries together) at a share of the primary requests.

Pure: everything reads the injected clock; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import numpy as np

from aggregator.clock import Clock

__all__ = ["BackupBudget", "FixedHedgeDelay", "HedgeDelay", "PercentileHedgeDelay"]


class HedgeDelay(Protocol):
    """How long a shard's first copy may be outstanding before a backup is sent."""

    def delay_s(self, shard: str) -> float | None:
        """Seconds to wait before hedging a request to ``shard``; ``None``: do not hedge."""
        ...

    def observe(self, shard: str, latency_s: float) -> None:
        """One request to ``shard`` took ``latency_s`` seconds (or at least that long)."""
        ...


class FixedHedgeDelay:
    """The same delay for every shard."""

    __slots__ = ("_delay_s",)

    def __init__(self, delay_s: float) -> None:
        if not 0 <= delay_s < math.inf:
            raise ValueError(
                f"hedge delay must be a finite number of seconds >= 0, got {delay_s!r}"
            )
        self._delay_s = delay_s

    def delay_s(self, shard: str) -> float | None:
        """The configured delay."""
        return self._delay_s

    def observe(self, shard: str, latency_s: float) -> None:
        """Ignored: the delay does not adapt."""


class _Window:
    __slots__ = ("cached_s", "refreshed_at_s", "samples")

    def __init__(self, max_samples: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.cached_s: float | None = None
        self.refreshed_at_s = -math.inf


class PercentileHedgeDelay:
    """Hedge once a request is slower than ``percentile`` of that shard's recent requests.

    Samples older than ``window_s`` are forgotten (at most ``max_samples`` are kept per shard);
    the percentile is recomputed at most every ``refresh_s``, as Finagle does (30 s window,
    3 s refresh), so a burst of slow answers moves it only gradually. Until a shard has
    ``min_samples`` samples there is no estimate, and ``fallback_s`` is used (``None``: no
    hedging yet). The delay never goes below ``min_delay_s``.

    Callers feed it censored samples too: a request abandoned after ``t`` seconds took *at
    least* ``t``. Abandoned copies are mostly those slower than the hedge delay, and for a
    percentile at or below that delay a lower bound ranks exactly like the true value, so the
    estimate stays unbiased where it matters.
    """

    __slots__ = (
        "_clock",
        "_fallback_s",
        "_max_samples",
        "_min_delay_s",
        "_min_samples",
        "_refresh_s",
        "_windows",
        "percentile",
        "window_s",
    )

    def __init__(
        self,
        clock: Clock,
        *,
        percentile: float = 95.0,
        window_s: float = 30.0,
        refresh_s: float = 3.0,
        min_samples: int = 100,
        max_samples: int = 10_000,
        fallback_s: float | None = None,
        min_delay_s: float = 0.0,
    ) -> None:
        if not 0 < percentile < 100:
            raise ValueError(f"hedge percentile must be in (0, 100), got {percentile!r}")
        if not 0 < window_s < math.inf:
            raise ValueError(f"window must be a finite number of seconds > 0, got {window_s!r}")
        if not 0 <= refresh_s <= window_s:
            raise ValueError(f"refresh must be in [0, window] seconds, got {refresh_s!r}")
        if not 1 <= min_samples <= max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        if fallback_s is not None and not 0 <= fallback_s < math.inf:
            raise ValueError(f"fallback delay must be >= 0 s, got {fallback_s!r}")
        if not 0 <= min_delay_s < math.inf:
            raise ValueError(f"minimum delay must be >= 0 s, got {min_delay_s!r}")
        self._clock = clock
        self.percentile = percentile
        self.window_s = window_s
        self._refresh_s = refresh_s
        self._min_samples = min_samples
        self._max_samples = max_samples
        self._fallback_s = fallback_s
        self._min_delay_s = min_delay_s
        self._windows: dict[str, _Window] = {}

    def observe(self, shard: str, latency_s: float) -> None:
        """Record one latency (seconds) of a request to ``shard``; NaN and negatives ignored."""
        if not 0 <= latency_s < math.inf:
            return
        window = self._windows.get(shard)
        if window is None:
            window = self._windows[shard] = _Window(self._max_samples)
        window.samples.append((self._clock.now_s(), latency_s))

    def delay_s(self, shard: str) -> float | None:
        """The shard's current percentile (seconds), or the fallback without enough samples."""
        window = self._windows.get(shard)
        if window is None:
            return self._fallback_s
        now_s = self._clock.now_s()
        # Refresh on schedule, and early while there is no estimate yet, so hedging starts
        # as soon as ``min_samples`` are in rather than a whole refresh period later.
        warming_up = window.cached_s is None and len(window.samples) >= self._min_samples
        if warming_up or now_s - window.refreshed_at_s >= self._refresh_s:
            self._refresh(window, now_s)
        if window.cached_s is None:
            return self._fallback_s
        return max(self._min_delay_s, window.cached_s)

    def samples(self, shard: str) -> int:
        """Samples of ``shard`` kept (those older than the window go at the next refresh)."""
        window = self._windows.get(shard)
        return 0 if window is None else len(window.samples)

    def _refresh(self, window: _Window, now_s: float) -> None:
        samples = window.samples
        horizon_s = now_s - self.window_s
        while samples and samples[0][0] < horizon_s:
            samples.popleft()
        window.refreshed_at_s = now_s
        if len(samples) < self._min_samples:
            window.cached_s = None
            return
        latencies = np.fromiter((s for _, s in samples), dtype=np.float64, count=len(samples))
        # The empirical quantile (smallest sample with at least ``percentile`` below or at
        # it, as HdrHistogram reports): no interpolation towards a rare 1 s outlier, which
        # in a young window would drag the delay up by tens of milliseconds.
        window.cached_s = float(np.percentile(latencies, self.percentile, method="inverted_cdf"))


class BackupBudget:
    """A token bucket capping backup requests (hedges and retries) at ``share`` of primaries.

    Every primary request deposits ``share`` of a token, up to ``burst`` tokens; every backup
    takes a whole token, and is refused when less than one is left. Over any long run,
    backups <= share x primaries + burst. Rationale (gRPC retry throttling, Finagle and
    Envoy retry budgets): hedges and retries multiply load exactly when a system is slow or
    failing, so a fixed share, not a per-request count, keeps a bad hour from becoming an
    outage. The bucket starts full so a fresh process can hedge at once.
    """

    __slots__ = ("_tokens", "backups", "burst", "primaries", "refused", "share")

    def __init__(self, share: float = 0.05, *, burst: float = 100.0) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"backup share must be in [0, 1], got {share!r}")
        if not 1 <= burst < math.inf:
            raise ValueError(f"burst must be a finite number of tokens >= 1, got {burst!r}")
        self.share = share
        self.burst = burst
        self._tokens = burst
        self.primaries = 0
        self.backups = 0
        self.refused = 0

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        return self._tokens

    def on_primary(self) -> None:
        """A primary request was sent: deposit ``share`` of a token."""
        self.primaries += 1
        self._tokens = min(self.burst, self._tokens + self.share)

    def try_spend(self) -> bool:
        """Take one token for a backup; False (and nothing taken) when the bucket is short."""
        if self._tokens < 1.0:
            self.refused += 1
            return False
        self._tokens -= 1.0
        self.backups += 1
        return True

    def extra_share(self) -> float:
        """Backups sent per primary request so far (0.0 before any primary)."""
        return self.backups / self.primaries if self.primaries else 0.0
