"""Latency histograms: a thin wrapper on HdrHistogram with the percentiles the reports use.

Every latency figure in the benchmark reports comes from one of these: 3 significant digits
(relative error at most 0.1%), microsecond resolution, values from 1 µs to one hour. A summary
always carries the count and the tail (p50 / p90 / p99 / p99.9 / max), never an average alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

__all__ = [
    "HIGHEST_US",
    "PERCENTILES",
    "SIGNIFICANT_DIGITS",
    "LatencyHistogram",
    "LatencySummary",
]

#: Significant digits kept by every histogram (relative error <= 0.1%).
SIGNIFICANT_DIGITS = 3
#: Largest value a histogram can hold, in microseconds (one hour); larger values are clamped
#: to it and counted in :attr:`LatencyHistogram.clamped`.
HIGHEST_US = 3_600_000_000
#: The percentiles every summary reports, in percent.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """The figures a report prints for one histogram; times in milliseconds.

    ``count`` is the number of values recorded; with ``count == 0`` every figure is ``nan``
    (there is nothing to report, and a zero would read as "instant").
    """

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    min_ms: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict (``nan`` becomes ``None``)."""
        return {
            "count": self.count,
            **{
                name: _json_float(getattr(self, name))
                for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "min_ms", "mean_ms")
            },
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


class LatencyHistogram:
    """An HdrHistogram of durations, recorded in seconds and reported in milliseconds.

    Values are stored as whole microseconds (rounded); a negative duration is a bug in the
    caller and raises :class:`ValueError`; a duration over :data:`HIGHEST_US` is clamped and
    counted in :attr:`clamped` so it is never silently lost.
    """

    __slots__ = ("_hist", "clamped")

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.clamped = 0

    def record_s(self, duration_s: float, count: int = 1) -> None:
        """Record ``duration_s`` seconds, ``count`` times."""
        self.record_us(duration_s * 1e6, count)

    def record_us(self, duration_us: float, count: int = 1) -> None:
        """Record ``duration_us`` microseconds, ``count`` times."""
        if not duration_us >= 0:  # also rejects NaN
            raise ValueError(f"a duration must be >= 0, got {duration_us!r} µs")
        value = round(duration_us)
        if value > HIGHEST_US:
            value = HIGHEST_US
            self.clamped += count
        self._hist.record_value(value, count)

    def record_many_s(self, durations_s: npt.NDArray[np.float64]) -> int:
        """Record every duration in ``durations_s`` (seconds, none NaN or negative), each
        once, as :meth:`record_s` would; returns how many distinct values that took.

        Why: durations are stored as whole microseconds, so a run's 100,000 latencies hold
        far fewer distinct values; recording each distinct value once with its count is the
        same histogram at a fraction of the interpreter time.
        """
        if durations_s.size == 0:
            return 0
        if not bool(np.all(durations_s >= 0)):  # also rejects NaN
            raise ValueError("a duration must be >= 0 (and not NaN)")
        values_us = np.rint(durations_s * 1e6).astype(np.int64)
        over = values_us > HIGHEST_US
        self.clamped += int(over.sum())
        values_us[over] = HIGHEST_US
        distinct, counts = np.unique(values_us, return_counts=True)
        record = self._hist.record_value
        for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
            record(value, count)
        return len(distinct)

    def add(self, other: LatencyHistogram) -> None:
        """Add every value of ``other`` into this histogram."""
        self._hist.add(other._hist)
        self.clamped += other.clamped

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return int(self._hist.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        """The value at ``percentile`` (0..100) in milliseconds; ``nan`` when empty."""
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
        if self.count == 0:
            return math.nan
        if percentile >= 100.0:
            return self.max_ms
        return float(self._hist.get_value_at_percentile(percentile)) / 1000.0

    @property
    def max_ms(self) -> float:
        """The largest value in milliseconds (to 3 significant digits); ``nan`` when empty."""
        if self.count == 0:
            return math.nan
        return float(self._hist.get_max_value()) / 1000.0

    @property
    def min_ms(self) -> float:
        """The smallest value in milliseconds; ``nan`` when empty."""
        if self.count == 0:
            return math.nan
        return float(self._hist.get_min_value()) / 1000.0

    @property
    def mean_ms(self) -> float:
        """The mean in milliseconds; ``nan`` when empty. Never report it without percentiles."""
        if self.count == 0:
            return math.nan
        return float(self._hist.get_mean_value()) / 1000.0

    def summary(self) -> LatencySummary:
        """Count, p50 / p90 / p99 / p99.9, max, min and mean."""
        p50, p90, p99, p999 = (self.percentile_ms(p) for p in PERCENTILES)
        return LatencySummary(
            count=self.count,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            p999_ms=p999,
            max_ms=self.max_ms,
            min_ms=self.min_ms,
            mean_ms=self.mean_ms,
        )

    def spectrum(self, ticks_per_half: int = 5) -> list[tuple[float, float]]:
        """The percentile spectrum as ``(percentile, value_ms)`` pairs, for plotting.

        Percentiles step towards 100 on a log scale of ``1 / (1 - p)`` (HdrHistogram's
        percentile iterator), so the tail gets as many points as the body; the last pair is
        the maximum at percentile 100. Empty when nothing was recorded.
        """
        if self.count == 0:
            return []
        points: list[tuple[float, float]] = []
        for item in self._hist.get_percentile_iterator(ticks_per_half):
            points.append((float(item.percentile_level_iterated_to), item.value_iterated_to / 1e3))
        if not points or points[-1][0] < 100.0:
            points.append((100.0, self.max_ms))
        return points

    def encode(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (for ``results.json``)."""
        encoded = self._hist.encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded)
