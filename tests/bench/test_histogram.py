"""Tests of bench.histogram: HdrHistogram-backed latency figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.histogram import HIGHEST_US, LatencyHistogram


def test_percentiles_are_within_a_tenth_of_a_percent() -> None:
    """p50 / p99 / max of 1..1000 ms come back within HdrHistogram's 3-digit precision."""
    h = LatencyHistogram()
    for ms in range(1, 1001):
        h.record_s(ms / 1000.0)
    s = h.summary()
    assert s.count == 1000
    assert s.p50_ms == pytest.approx(500.0, rel=1e-3)
    assert s.p90_ms == pytest.approx(900.0, rel=1e-3)
    assert s.p99_ms == pytest.approx(990.0, rel=1e-3)
    assert s.p999_ms == pytest.approx(999.0, rel=1e-3)
    assert s.max_ms == pytest.approx(1000.0, rel=1e-3)
    assert s.min_ms == pytest.approx(1.0, rel=1e-3)


def test_microsecond_resolution() -> None:
    """Sub-millisecond durations keep microsecond resolution."""
    h = LatencyHistogram()
    h.record_us(250)
    assert h.percentile_ms(50) == pytest.approx(0.25, abs=1e-3)


def test_empty_histogram_reports_nan_not_zero() -> None:
    """With nothing recorded every figure is NaN (a zero would read as instant)."""
    s = LatencyHistogram().summary()
    assert s.count == 0
    assert math.isnan(s.p50_ms)
    assert math.isnan(s.max_ms)
    assert s.to_dict()["p99_ms"] is None
    assert LatencyHistogram().spectrum() == []


def test_negative_or_nan_duration_is_rejected() -> None:
    """A negative or NaN duration is a caller bug and raises ValueError."""
    h = LatencyHistogram()
    with pytest.raises(ValueError, match="duration"):
        h.record_s(-0.001)
    with pytest.raises(ValueError, match="duration"):
        h.record_s(math.nan)


def test_overlong_duration_is_clamped_and_counted() -> None:
    """A value past one hour is kept at the ceiling and counted, never lost."""
    h = LatencyHistogram()
    h.record_us(HIGHEST_US * 2)
    assert h.count == 1
    assert h.clamped == 1
    assert h.max_ms == pytest.approx(HIGHEST_US / 1000.0, rel=1e-3)


def test_add_merges_counts() -> None:
    """Adding a histogram merges its values and clamped count."""
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record_s(0.001, count=3)
    b.record_s(0.002, count=1)
    a.add(b)
    assert a.count == 4
    assert a.max_ms == pytest.approx(2.0, rel=1e-3)


def test_spectrum_climbs_to_the_max_at_100() -> None:
    """The spectrum is non-decreasing and ends with the maximum at percentile 100."""
    h = LatencyHistogram()
    for ms in range(1, 101):
        h.record_s(ms / 1000.0)
    points = h.spectrum()
    assert points[-1] == (100.0, h.max_ms)
    values = [v for _, v in points]
    assert values == sorted(values)


def test_percentile_out_of_range_raises() -> None:
    """Asking for a percentile outside 0..100 raises ValueError."""
    with pytest.raises(ValueError, match="percentile"):
        LatencyHistogram().percentile_ms(101)


def test_encode_is_text() -> None:
    """The compressed form is ASCII text, ready for JSON."""
    h = LatencyHistogram()
    h.record_s(0.01)
    assert isinstance(h.encode(), str)
    assert h.encode()


def test_record_many_is_the_same_histogram_as_recording_one_by_one() -> None:
    """Recording an array at once gives the same counts and percentiles as recording each
    value, in fewer (distinct) records; overlong values are clamped and counted; a NaN or a
    negative value is refused before anything is recorded."""
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.lognormal(-6.0, 1.0, 20_000), [1e9, 1e9]])
    one_by_one, at_once = LatencyHistogram(), LatencyHistogram()
    for value in values.tolist():
        one_by_one.record_s(value)
    distinct = at_once.record_many_s(values)
    assert distinct < len(values)
    assert at_once.count == one_by_one.count == len(values)
    assert at_once.clamped == one_by_one.clamped == 2
    for percentile in (50, 90, 99, 99.9, 100):
        assert at_once.percentile_ms(percentile) == one_by_one.percentile_ms(percentile)
    for bad in (np.array([0.001, np.nan]), np.array([0.001, -1.0])):
        with pytest.raises(ValueError, match=">= 0"):
            at_once.record_many_s(bad)
    assert at_once.count == len(values)
    assert at_once.record_many_s(np.array([])) == 0
