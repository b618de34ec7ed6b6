"""Driving one shard's part of a query plan: call a replica, check what it returned.

Whatever happens here becomes a :class:`ShardResult`; only cancellation propagates. A backend
that raises, returns the wrong type, or returns hits that are not finite-scored and
well-formed becomes an ``error`` outcome with a reason; it never breaks the query.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from aggregator.backend import ShardBackend
from aggregator.clock import Clock
from aggregator.cluster import Shard
from aggregator.deadline import Deadline
from aggregator.errors import ShardMalformedReply, ShardRejected, ShardTimeout
from aggregator.plan import ShardPlan
from aggregator.types import Hit, OutcomeStatus, Query, ShardOutcome, ShardReply

__all__ = ["ShardCall", "ShardResult", "drive_shard", "validate_reply"]


@dataclass(frozen=True, slots=True)
class ShardResult:
    """A finished shard call: its outcome and the hits it contributed (empty unless ok)."""

    outcome: ShardOutcome
    hits: tuple[Hit, ...] = ()


class ShardCall:
    """The mutable progress of one shard's call, read when the coordinator gives up on it."""

    __slots__ = (
        "attempts",
        "clock",
        "deadline",
        "hedged",
        "phase",
        "plan",
        "query",
        "replica",
        "shard",
        "started_at_s",
    )

    def __init__(
        self, shard: Shard, plan: ShardPlan, query: Query, deadline: Deadline, clock: Clock
    ) -> None:
        self.shard = shard
        self.plan = plan
        self.query = query
        self.deadline = deadline
        self.clock = clock
        self.started_at_s = clock.now_s()
        self.phase = "queued"
        self.replica: str | None = None
        self.attempts = 0
        self.hedged = False

    def latency_ms(self, now_s: float) -> float:
        """Milliseconds since this call was dispatched."""
        return max(0.0, (now_s - self.started_at_s) * 1000.0)

    def outcome(
        self,
        status: OutcomeStatus,
        now_s: float,
        *,
        hits: int = 0,
        docs: int | None = None,
        reason: str | None = None,
    ) -> ShardOutcome:
        """An outcome for this call at ``now_s``."""
        return ShardOutcome(
            shard=self.shard.name,
            status=status,
            latency_ms=self.latency_ms(now_s),
            hits=hits,
            docs=self.shard.doc_count if docs is None else docs,
            reason=reason,
            replica=self.replica,
            hedged=self.hedged,
            attempts=max(self.attempts, 1) if self.phase != "queued" else self.attempts,
        )

    def given_up(self, now_s: float, *, cut_by_grace: bool = False) -> ShardOutcome:
        """The outcome of a call the coordinator stopped waiting for."""
        if cut_by_grace:
            reason = "cut: min_coverage reached and its grace period ended"
        elif self.phase == "queued":
            reason = "deadline exceeded waiting for a slot to the shard"
        else:
            reason = "deadline exceeded"
        return self.outcome(OutcomeStatus.TIMEOUT, now_s, reason=reason)


def _replica_label(shard: Shard, index: int) -> str | None:
    return None if len(shard.replicas) == 1 else f"{shard.name}/{index}"


def validate_reply(reply: object, shard: str) -> ShardReply:
    """Check a backend's reply and return it with every hit stamped with ``shard``.

    Raises :class:`ShardMalformedReply` naming the first problem found.
    """
    if not isinstance(reply, ShardReply):
        raise ShardMalformedReply(f"backend returned {type(reply).__name__}, not a ShardReply")
    docs = reply.docs
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 0:
        raise ShardMalformedReply(f"document count must be a non-negative integer, got {docs!r}")
    hits = reply.hits
    if not isinstance(hits, tuple | list):
        raise ShardMalformedReply(f"hits must be a sequence, got {type(hits).__name__}")
    restamp = False
    for hit in hits:
        if not isinstance(hit, Hit):
            raise ShardMalformedReply(f"hit must be a Hit, got {type(hit).__name__}")
        score = hit.score
        if (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise ShardMalformedReply(f"hit {hit.doc_id!r} has a non-finite score {score!r}")
        if not isinstance(hit.doc_id, str) or not hit.doc_id:
            raise ShardMalformedReply(f"hit has an invalid doc id {hit.doc_id!r}")
        restamp = restamp or hit.shard != shard
    if restamp or not isinstance(hits, tuple):
        hits = tuple(
            h if h.shard == shard else Hit(h.doc_id, float(h.score), shard, h.title) for h in hits
        )
        return ShardReply(shard, docs, hits, reply.took_ms)
    return reply


async def _call_replica(call: ShardCall, index: int) -> ShardReply:
    backend: ShardBackend = call.shard.replicas[index]
    call.replica = _replica_label(call.shard, index)
    call.attempts += 1
    return validate_reply(await backend.search(call.query, call.deadline), call.shard.name)


async def drive_shard(call: ShardCall, limit: asyncio.Semaphore) -> ShardResult:
    """Run one shard's part of the plan; every failure becomes an outcome.

    ``limit`` bounds concurrent calls to this shard; waiting for it counts against the
    deadline. Only :class:`asyncio.CancelledError` escapes.
    """
    clock = call.clock
    async with limit:
        call.phase = "sent"
        try:
            reply = await _call_replica(call, call.plan.replicas[0])
        except ShardTimeout as exc:
            return ShardResult(
                call.outcome(OutcomeStatus.TIMEOUT, clock.now_s(), reason=str(exc) or "timeout")
            )
        except ShardRejected as exc:
            return ShardResult(
                call.outcome(OutcomeStatus.REJECTED, clock.now_s(), reason=str(exc) or "rejected")
            )
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return ShardResult(call.outcome(OutcomeStatus.ERROR, clock.now_s(), reason=reason))
    now = clock.now_s()
    outcome = call.outcome(OutcomeStatus.OK, now, hits=len(reply.hits), docs=reply.docs)
    return ShardResult(outcome, reply.hits)
