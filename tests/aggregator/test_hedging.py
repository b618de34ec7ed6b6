"""Hedge delays (fixed, rolling percentile) and the shared backup budget."""

from __future__ import annotations

import pytest

from aggregator.clock import ManualClock
from aggregator.hedging import BackupBudget, FixedHedgeDelay, PercentileHedgeDelay


def test_fixed_delay_is_the_same_for_every_shard() -> None:
    """A fixed delay ignores observations."""
    delay = FixedHedgeDelay(0.020)
    delay.observe("a", 5.0)
    assert delay.delay_s("a") == delay.delay_s("b") == 0.020
    with pytest.raises(ValueError, match="hedge delay"):
        FixedHedgeDelay(-1.0)


def test_percentile_needs_min_samples_then_tracks_the_shard() -> None:
    """No estimate (the fallback) until min_samples, then the shard's own p95."""
    clock = ManualClock()
    delay = PercentileHedgeDelay(clock, percentile=95, min_samples=100, fallback_s=None)
    for i in range(99):
        delay.observe("a", (i + 1) / 1000.0)
    assert delay.delay_s("a") is None
    delay.observe("a", 0.100)
    assert delay.delay_s("a") == pytest.approx(0.095)
    assert delay.delay_s("b") is None


def test_percentile_is_the_empirical_quantile_not_an_interpolation() -> None:
    """A rare 1 s outlier above the percentile does not drag the delay up."""
    clock = ManualClock()
    delay = PercentileHedgeDelay(clock, percentile=95, min_samples=100)
    for _ in range(98):
        delay.observe("a", 0.010)
    delay.observe("a", 1.0)
    delay.observe("a", 1.0)
    assert delay.delay_s("a") == pytest.approx(0.010)


def test_percentile_refreshes_at_most_every_refresh_period() -> None:
    """New samples move the delay only at the next refresh, and old ones leave the window."""
    clock = ManualClock()
    delay = PercentileHedgeDelay(clock, percentile=50, window_s=10.0, refresh_s=3.0, min_samples=10)
    for _ in range(10):
        delay.observe("a", 0.010)
    assert delay.delay_s("a") == pytest.approx(0.010)
    clock.advance(1.0)
    for _ in range(30):
        delay.observe("a", 0.050)
    assert delay.delay_s("a") == pytest.approx(0.010)  # not refreshed yet
    clock.advance(2.0)
    assert delay.delay_s("a") == pytest.approx(0.050)
    clock.advance(20.0)  # everything is older than the window now
    assert delay.delay_s("a") is None
    assert delay.samples("a") == 0


def test_minimum_delay_and_fallback() -> None:
    """The delay never goes below its floor; a shard without an estimate gets the fallback."""
    clock = ManualClock()
    delay = PercentileHedgeDelay(clock, min_samples=1, fallback_s=0.050, min_delay_s=0.002)
    assert delay.delay_s("a") == 0.050
    delay.observe("a", 0.0001)
    assert delay.delay_s("a") == 0.002


def test_percentile_rejects_nonsense() -> None:
    """Percentiles outside (0, 100) and bad windows are refused; NaN samples ignored."""
    clock = ManualClock()
    with pytest.raises(ValueError, match="percentile"):
        PercentileHedgeDelay(clock, percentile=100)
    with pytest.raises(ValueError, match="window"):
        PercentileHedgeDelay(clock, window_s=0)
    delay = PercentileHedgeDelay(clock, min_samples=1)
    delay.observe("a", float("nan"))
    delay.observe("a", -1.0)
    assert delay.samples("a") == 0


def test_budget_caps_backups_at_the_share_of_primaries() -> None:
    """Over a long run backups stay within share x primaries + burst."""
    budget = BackupBudget(0.05, burst=10)
    sent = 0
    for _ in range(10_000):
        budget.on_primary()
        if budget.try_spend():
            sent += 1
    assert sent <= 0.05 * 10_000 + 10
    assert sent >= 0.05 * 10_000
    assert budget.refused == 10_000 - sent
    assert budget.extra_share() == pytest.approx(sent / 10_000)


def test_budget_starts_full_and_refuses_when_short() -> None:
    """A fresh bucket allows a burst; an empty one refuses without going negative."""
    budget = BackupBudget(0.0, burst=2)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.tokens == 0.0
    assert (budget.backups, budget.refused) == (2, 1)


def test_budget_rejects_bad_settings() -> None:
    """A share outside [0, 1] or a burst under one token is refused."""
    with pytest.raises(ValueError, match="share"):
        BackupBudget(1.5)
    with pytest.raises(ValueError, match="burst"):
        BackupBudget(0.05, burst=0.5)
