"""What the dispatcher tells tail-tolerance policies, and asks them, while it drives a shard.

A plan (:mod:`aggregator.plan`) is decided before any call; some decisions can only be made
while calls are in flight: may this replica be called now (its breaker may have opened since
the plan was made), may a backup copy be sent (the hedge and retry budget), how long to back
off before a retry. And the policies learn from every replica call: its latency and how it
ended. :class:`DispatchFeedback` is that conversation; :class:`NoFeedback` is the default that
admits every replica, sends the hedges a plan asks for, never retries and learns nothing.

Replicas are named by ``(shard name, replica index)``, the index into
:attr:`aggregator.cluster.Shard.replicas`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["AttemptKind", "AttemptResult", "DispatchFeedback", "NoFeedback"]


class AttemptKind(StrEnum):
    """Why a request to a replica was made."""

    #: The first request of a shard call.
    PRIMARY = "primary"
    #: A backup copy sent because earlier copies were slow to answer.
    HEDGE = "hedge"
    #: A new request after every earlier one failed fast.
    RETRY = "retry"


class AttemptResult(StrEnum):
    """How one request to a replica ended."""

    OK = "ok"
    #: The replica failed: unreachable, 5xx, malformed reply, any unexpected exception.
    ERROR = "error"
    #: The replica did not answer within the query's budget.
    TIMEOUT = "timeout"
    #: The replica refused the call because it is overloaded.
    REJECTED = "rejected"
    #: The request was abandoned before the deadline (another copy won, or the query ended).
    CANCELLED = "cancelled"


@runtime_checkable
class DispatchFeedback(Protocol):
    """The run-time side of a tail-tolerance policy.

    Every method is called from the event loop, must not block and must not raise. ``now_s``
    is on the coordinator's clock.
    """

    def admit(self, shard: str, replica: int, now_s: float) -> bool:
        """May ``replica`` be called now? False skips it (e.g. its circuit is open)."""
        ...

    def on_attempt_start(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """A request to ``replica`` was just sent."""
        ...

    def on_attempt_end(
        self,
        shard: str,
        replica: int,
        kind: AttemptKind,
        result: AttemptResult,
        latency_s: float,
        now_s: float,
    ) -> None:
        """A request ended after ``latency_s`` seconds (for a cancelled one: a lower bound)."""
        ...

    def on_answer(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """The shard call's answer came from ``replica`` (its winning request was ``kind``)."""
        ...

    def try_backup(self, shard: str, kind: AttemptKind, now_s: float) -> bool:
        """May a backup request (``HEDGE`` or ``RETRY``) be sent? True spends budget on it."""
        ...

    def retry_backoff_s(self, shard: str, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        ...


class NoFeedback:
    """No run-time policy: every replica admitted, planned hedges sent, no retries."""

    __slots__ = ()

    def admit(self, shard: str, replica: int, now_s: float) -> bool:
        """Always True."""
        return True

    def on_attempt_start(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """Ignored."""

    def on_attempt_end(
        self,
        shard: str,
        replica: int,
        kind: AttemptKind,
        result: AttemptResult,
        latency_s: float,
        now_s: float,
    ) -> None:
        """Ignored."""

    def on_answer(self, shard: str, replica: int, kind: AttemptKind, now_s: float) -> None:
        """Ignored."""

    def try_backup(self, shard: str, kind: AttemptKind, now_s: float) -> bool:
        """Hedges the plan asks for are sent; retries need a budget, so never."""
        return kind is AttemptKind.HEDGE

    def retry_backoff_s(self, shard: str, retry_number: int) -> float:
        """Never called (no retries), 0 s."""
        return 0.0
