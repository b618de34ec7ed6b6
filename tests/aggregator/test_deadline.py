"""Deadlines and budgets as validated values."""

from __future__ import annotations

import math

import pytest

from aggregator import Deadline, InvalidQuery
from aggregator.clock import ManualClock


def test_deadline_after_budget() -> None:
    """A 100 ms budget started at t=5 s expires at 5.1 s and reports what is left."""
    d = Deadline.after(5.0, 100)
    assert d.expires_at_s == pytest.approx(5.1)
    assert d.budget_ms == pytest.approx(100.0)
    assert d.remaining_ms(5.04) == pytest.approx(60.0)
    assert d.remaining_s(6.0) == 0.0
    assert not d.is_expired(5.09)
    assert d.is_expired(5.1)
    assert d.elapsed_ms(5.025) == pytest.approx(25.0)


def test_no_budget_means_no_limit() -> None:
    """None is an unbounded deadline: infinite remaining time, no budget."""
    d = Deadline.after(1.0, None)
    assert d.is_unbounded
    assert d.budget_ms is None
    assert math.isinf(d.remaining_s(1e9))


@pytest.mark.parametrize("budget", [0, -1, math.nan, math.inf, 60_001, "100", True])
def test_bad_budgets_are_rejected(budget: object) -> None:
    """Zero, negative, NaN, infinite, over-long and non-numeric budgets raise InvalidQuery."""
    with pytest.raises(InvalidQuery, match="deadline_ms"):
        Deadline.after(0.0, budget)  # type: ignore[arg-type]


def test_sooner_only_tightens() -> None:
    """`sooner` never extends a deadline."""
    d = Deadline.after(0.0, 100)
    assert d.sooner(0.2) is d
    assert d.sooner(0.05).expires_at_s == pytest.approx(0.05)


def test_deadline_cannot_expire_before_it_starts() -> None:
    """A deadline that ends before it starts is rejected."""
    with pytest.raises(InvalidQuery):
        Deadline(started_at_s=1.0, expires_at_s=0.5)


def test_manual_clock_moves_forward_only() -> None:
    """The manual clock for policy tests refuses to go backwards."""
    clock = ManualClock(10.0)
    clock.advance(0.5)
    assert clock.now_s() == 10.5
    with pytest.raises(ValueError, match="cannot move"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="cannot move"):
        clock.set(3.0)
