"""Deadlines as values.

A query has one end-to-end budget. It becomes a :class:`Deadline`, an absolute instant on the
injected clock, the moment the query arrives; every stage and every outbound call derives its own
timeout from that one instant, so no stage can extend it.
"""

from __future__ import annotations

import math

import msgspec

from aggregator.errors import InvalidQuery

__all__ = ["MAX_BUDGET_MS", "Deadline", "validate_budget_ms"]

#: The longest budget a query may ask for (one minute); anything longer is a mistake.
MAX_BUDGET_MS = 60_000.0


def validate_budget_ms(budget_ms: float | None, *, name: str = "deadline_ms") -> float | None:
    """Return ``budget_ms`` if it is a usable budget, else raise :class:`InvalidQuery`.

    ``None`` means "no limit". A budget must be a finite number in (0, 60000] milliseconds.
    """
    if budget_ms is None:
        return None
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, int | float):
        raise InvalidQuery(f"{name} must be a number of milliseconds, got {budget_ms!r}")
    if math.isnan(budget_ms) or not 0 < budget_ms <= MAX_BUDGET_MS:
        raise InvalidQuery(f"{name} must be in (0, {MAX_BUDGET_MS:g}] ms, got {budget_ms!r}")
    return float(budget_ms)


class Deadline(msgspec.Struct, frozen=True):
    """An absolute instant on a clock, in seconds; ``math.inf`` means no limit.

    ``started_at_s`` is when the budget started counting, so the budget and the time already
    spent can be reported.
    """

    started_at_s: float
    expires_at_s: float

    def __post_init__(self) -> None:
        if math.isnan(self.started_at_s) or math.isinf(self.started_at_s):
            raise InvalidQuery(f"deadline start must be finite, got {self.started_at_s!r}")
        if math.isnan(self.expires_at_s) or self.expires_at_s < self.started_at_s:
            raise InvalidQuery(
                f"deadline must not expire ({self.expires_at_s!r}) before it starts "
                f"({self.started_at_s!r})"
            )

    @classmethod
    def after(cls, now_s: float, budget_ms: float | None) -> Deadline:
        """A deadline ``budget_ms`` after ``now_s``; ``None`` for no limit.

        Raises :class:`InvalidQuery` for a negative, zero, NaN or over-long budget.
        """
        valid = validate_budget_ms(budget_ms)
        expires_at_s = math.inf if valid is None else now_s + valid / 1000.0
        return cls(started_at_s=now_s, expires_at_s=expires_at_s)

    @property
    def is_unbounded(self) -> bool:
        """True when this deadline never expires."""
        return math.isinf(self.expires_at_s)

    @property
    def budget_ms(self) -> float | None:
        """The whole budget in milliseconds, ``None`` when unbounded."""
        if self.is_unbounded:
            return None
        return (self.expires_at_s - self.started_at_s) * 1000.0

    def remaining_s(self, now_s: float) -> float:
        """Seconds left at ``now_s``, never negative; ``math.inf`` when unbounded."""
        return max(0.0, self.expires_at_s - now_s)

    def remaining_ms(self, now_s: float) -> float:
        """Milliseconds left at ``now_s``, never negative; ``math.inf`` when unbounded."""
        return self.remaining_s(now_s) * 1000.0

    def is_expired(self, now_s: float) -> bool:
        """True once ``now_s`` has reached the deadline."""
        return now_s >= self.expires_at_s

    def elapsed_ms(self, now_s: float) -> float:
        """Milliseconds since the budget started."""
        return (now_s - self.started_at_s) * 1000.0

    def sooner(self, other_expires_at_s: float) -> Deadline:
        """This deadline, tightened to ``other_expires_at_s`` if that comes first."""
        if other_expires_at_s >= self.expires_at_s:
            return self
        return Deadline(self.started_at_s, max(self.started_at_s, other_expires_at_s))
