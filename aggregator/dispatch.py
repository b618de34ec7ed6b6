"""Driving one shard's part of a query plan: call replicas, hedge, retry, check the reply.

Whatever happens here becomes a :class:`ShardResult`; only cancellation propagates. A backend
that raises, returns the wrong type, or returns hits that are not finite-scored and
well-formed becomes an ``error`` outcome with a reason; it never breaks the query.

The tail-tolerance rules (The Tail at Scale, gRPC hedging, Finagle backup requests):

- The first replica in the plan gets the primary request. If ``hedge_after_s`` passes without
  an answer, a backup copy goes to the next replica in the plan (if the hedge budget allows);
  each further ``hedge_after_s`` without an answer sends the next one. The first successful
  answer wins; every other copy is cancelled.
- A fast failure (:class:`ShardUnavailable`: refused or reset connection, 5xx) may be retried
  on the next replica after a full-jitter backoff, only if the backoff ends before the
  deadline and the budget allows. A timeout is never retried: the budget is spent, and a
  retry would only add load to a shard that is already too slow.
- A replica whose circuit is open is skipped; with none left the shard is ``skipped`` with
  reason ``circuit_open``.
"""

from __future__ import annotations

import asyncio
from operator import attrgetter
from typing import Any

import msgspec

from aggregator.backend import ShardBackend
from aggregator.clock import Clock
from aggregator.cluster import Shard
from aggregator.deadline import Deadline
from aggregator.errors import (
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.feedback import AttemptKind, AttemptResult, DispatchFeedback, NoFeedback
from aggregator.limit import CallLimit
from aggregator.plan import CIRCUIT_OPEN, ShardPlan
from aggregator.retry import is_retryable
from aggregator.types import Hit, OutcomeStatus, Query, ShardOutcome, ShardReply

__all__ = ["ShardCall", "ShardResult", "drive_shard", "validate_reply"]

_NO_FEEDBACK = NoFeedback()
#: How early a timer may fire relative to its target (loop clock resolution), in seconds.
_TIMER_SLACK_S = 1e-6


class ShardResult(msgspec.Struct, frozen=True):
    """A finished shard call: its outcome and the hits it contributed (empty unless ok)."""

    outcome: ShardOutcome
    hits: tuple[Hit, ...] = ()


class ShardCall:
    """The mutable progress of one shard's call, read when the coordinator gives up on it."""

    __slots__ = (
        "attempts",
        "clock",
        "deadline",
        "feedback",
        "hedged",
        "lingering",
        "phase",
        "plan",
        "query",
        "replica",
        "shard",
        "started_at_s",
    )

    def __init__(
        self,
        shard: Shard,
        plan: ShardPlan,
        query: Query,
        deadline: Deadline,
        clock: Clock,
        *,
        feedback: DispatchFeedback | None = None,
        lingering: set[asyncio.Task[Any]] | None = None,
        started_at_s: float | None = None,
    ) -> None:
        """``feedback`` is consulted and told about every replica request (default: none);
        ``lingering`` receives cancelled requests that have not finished unwinding when the
        call returns (default: a set of this call's own), so they stay referenced;
        ``started_at_s`` is when the call was dispatched (default: now)."""
        self.shard = shard
        self.plan = plan
        self.query = query
        self.deadline = deadline
        self.clock = clock
        self.feedback: DispatchFeedback = _NO_FEEDBACK if feedback is None else feedback
        self.lingering: set[asyncio.Task[Any]] = set() if lingering is None else lingering
        self.started_at_s = clock.now_s() if started_at_s is None else started_at_s
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
            attempts=self.attempts,
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


_OK = OutcomeStatus.OK


def _replica_label(shard: Shard, index: int) -> str | None:
    return None if len(shard.replicas) == 1 else f"{shard.name}/{index}"


def validate_reply(reply: object, shard: str) -> ShardReply:
    """Check a backend's reply and return it with every hit stamped with ``shard``.

    A :class:`ShardReply` checks its own shape and a :class:`Hit` its own id and score when
    they are built, so what is left is the type of what came back and whose hits they are.
    Raises :class:`ShardMalformedReply` when the backend returned something else.
    """
    if type(reply) is not ShardReply and not isinstance(reply, ShardReply):
        raise ShardMalformedReply(f"backend returned {type(reply).__name__}, not a ShardReply")
    hits = reply.hits
    # map/set loop in C: this runs for every reply of every query.
    if not hits or set(map(_shard_of, hits)) == {shard}:
        return reply
    stamped = tuple(h if h.shard == shard else Hit(h.doc_id, h.score, shard, h.title) for h in hits)
    return ShardReply(shard, reply.docs, stamped, reply.took_ms)


_shard_of = attrgetter("shard")


class _CircuitOpen(Exception):
    """Every replica left in the plan refused admission (its circuit is open)."""


async def _attempt(call: ShardCall, replica: int, kind: AttemptKind) -> ShardReply:
    """One request to one replica, reported to the feedback however it ends."""
    feedback = call.feedback
    shard = call.shard.name
    clock = call.clock
    started_s = clock.now_s()
    feedback.on_attempt_start(shard, replica, kind, started_s)
    result = AttemptResult.ERROR
    try:
        backend: ShardBackend = call.shard.replicas[replica]
        reply = validate_reply(await backend.search(call.query, call.deadline), shard)
        result = AttemptResult.OK
        return reply
    except asyncio.CancelledError:
        # Abandoned at the deadline, the replica did not answer in time: that counts against
        # it. Abandoned earlier (another copy won, the client left): it says nothing.
        expired = call.deadline.is_expired(clock.now_s())
        result = AttemptResult.TIMEOUT if expired else AttemptResult.CANCELLED
        raise
    except ShardTimeout:
        result = AttemptResult.TIMEOUT
        raise
    except ShardRejected:
        result = AttemptResult.REJECTED
        raise
    finally:
        now_s = clock.now_s()
        feedback.on_attempt_end(shard, replica, kind, result, now_s - started_s, now_s)


def _next_admitted(call: ShardCall, position: int) -> int | None:
    """The first position at or after ``position`` in the plan whose replica is admitted."""
    replicas = call.plan.replicas
    now_s = call.clock.now_s()
    for pos in range(position, len(replicas)):
        if call.feedback.admit(call.shard.name, replicas[pos], now_s):
            return pos
    return None


def _start(call: ShardCall, position: int) -> int:
    """Account for a request to the replica at ``position``; return the replica index."""
    replica = call.plan.replicas[position]
    call.attempts += 1
    if len(call.shard.replicas) > 1:
        call.replica = f"{call.shard.name}/{replica}"
    return replica


async def _wait_for_retry(call: ShardCall, position: int, retry_number: int) -> int | None:
    """After a fast failure: back off and return the plan position to retry on, or None.

    None when the plan has no replica left, the backoff would end past the deadline, or the
    budget refuses. The backoff is slept here, so it counts against the deadline.
    """
    if _next_admitted(call, position) is None:
        return None
    shard = call.shard.name
    now_s = call.clock.now_s()
    backoff_s = call.feedback.retry_backoff_s(shard, retry_number)
    if now_s + backoff_s >= call.deadline.expires_at_s:
        return None
    if not call.feedback.try_backup(shard, AttemptKind.RETRY, now_s):
        return None
    if backoff_s > 0:
        await asyncio.sleep(backoff_s)
    # Admission is checked again: a breaker may have opened during the backoff.
    return _next_admitted(call, position)


async def _drive_sequential(call: ShardCall) -> ShardReply:
    """One request at a time: the primary, then retries after fast failures."""
    position = _next_admitted(call, 0)
    if position is None:
        raise _CircuitOpen
    kind = AttemptKind.PRIMARY
    retries = 0
    while True:
        replica = _start(call, position)
        try:
            reply = await _attempt(call, replica, kind)
        except ShardUnavailable:
            retry_at = await _wait_for_retry(call, position + 1, retries + 1)
            if retry_at is None:
                raise
            position, kind, retries = retry_at, AttemptKind.RETRY, retries + 1
            continue
        call.feedback.on_answer(call.shard.name, replica, kind, call.clock.now_s())
        return reply


async def _drive_hedged(call: ShardCall, hedge_after_s: float) -> ShardReply:
    """Copies in flight at once: a backup after each ``hedge_after_s`` without an answer.

    Rationale: a request still unanswered at the shard's usual p95 is probably stuck behind
    something transient (a pause, a queue, a slow disk) on its replica; a copy on another
    replica usually answers in the normal time. Waiting for the delay first keeps the extra
    load to about the share of requests slower than it, and the budget caps it outright.
    """
    loop = asyncio.get_running_loop()
    clock = call.clock
    feedback = call.feedback
    shard = call.shard.name
    replicas = call.plan.replicas
    # Insertion order is launch order: ties in one loop turn go to the earlier copy.
    in_flight: dict[asyncio.Task[ShardReply], tuple[int, AttemptKind]] = {}

    # One future per wait, woken by whichever comes first: a copy finishing or the hedge
    # timer. Cheaper than asyncio.wait, which re-registers callbacks on every copy each time.
    wake: asyncio.Future[None] = loop.create_future()

    def on_event(_: object = None) -> None:
        if not wake.done():
            wake.set_result(None)

    def launch(position: int, kind: AttemptKind) -> float:
        replica = _start(call, position)
        task = loop.create_task(_attempt(call, replica, kind))
        task.add_done_callback(on_event)
        in_flight[task] = (replica, kind)
        return clock.now_s()

    first = _next_admitted(call, 0)
    if first is None:
        raise _CircuitOpen
    last_launch_s = launch(first, AttemptKind.PRIMARY)
    next_position = first + 1
    may_hedge = True
    retries = 0
    error: BaseException | None = None
    try:
        while True:
            timer: asyncio.TimerHandle | None = None
            if may_hedge and next_position < len(replicas):
                delay_s = max(0.0, last_launch_s + hedge_after_s - clock.now_s())
                timer = loop.call_later(delay_s, on_event)
            try:
                await wake
            finally:
                if timer is not None:
                    timer.cancel()
            wake = loop.create_future()
            done = [t for t in in_flight if t.done()]
            if not done:
                now_s = clock.now_s()
                hedge_due = may_hedge and next_position < len(replicas)
                if not hedge_due or now_s < last_launch_s + hedge_after_s - _TIMER_SLACK_S:
                    continue  # woken by a copy already handled: wait again
                position = _next_admitted(call, next_position)
                if (
                    position is None
                    or call.deadline.is_expired(now_s)
                    or not feedback.try_backup(shard, AttemptKind.HEDGE, now_s)
                ):
                    may_hedge = False  # refused once, refused for the rest of this call
                    continue
                call.hedged = True
                last_launch_s = launch(position, AttemptKind.HEDGE)
                next_position = position + 1
                continue
            for task in done:
                replica, kind = in_flight.pop(task)
                if task.cancelled():  # not by us: count it as a failed copy
                    error = error or ShardError("request to the replica was cancelled")
                    continue
                exc = task.exception()
                if exc is None:
                    call.replica = _replica_label(call.shard, replica)
                    feedback.on_answer(shard, replica, kind, clock.now_s())
                    await _cancel_losers(call, in_flight)
                    return task.result()
                error = exc
            if in_flight:
                continue
            # Every copy failed. Only a fast failure is worth another try.
            assert error is not None
            if not is_retryable(error):
                raise error
            retry_at = await _wait_for_retry(call, next_position, retries + 1)
            if retry_at is None:
                raise error
            retries += 1
            last_launch_s = launch(retry_at, AttemptKind.RETRY)
            next_position = retry_at + 1
    finally:
        # Reached with copies still in flight only when this call itself is cancelled (the
        # coordinator gave up, the client left): cancel them and keep them referenced until
        # they finish, without delaying the cancellation.
        for task in in_flight:
            task.cancel()
            _track(call, task)


async def _cancel_losers(
    call: ShardCall, in_flight: dict[asyncio.Task[ShardReply], tuple[int, AttemptKind]]
) -> None:
    """Cancel the copies that lost, give them one loop turn to unwind, track the rest."""
    losers = list(in_flight)
    in_flight.clear()
    if not losers:
        return
    for task in losers:
        task.cancel()
    try:
        await asyncio.wait(losers, timeout=0)
    finally:
        for task in losers:
            if not task.done():
                _track(call, task)


def _track(call: ShardCall, task: asyncio.Task[Any]) -> None:
    if not task.done():
        call.lingering.add(task)
        task.add_done_callback(call.lingering.discard)


async def drive_shard(call: ShardCall, limit: CallLimit) -> ShardResult:
    """Run one shard's part of the plan; every failure becomes an outcome.

    ``limit`` bounds concurrent calls to this shard (one slot per shard call, backups
    included); waiting for it counts against the deadline. Only
    :class:`asyncio.CancelledError` escapes; copies still in flight when it does are
    cancelled and left in ``call.lingering`` until they finish.
    """
    clock = call.clock
    hedge_after_s = call.plan.hedge_after_s
    if not limit.try_acquire():
        await limit.acquire()
    try:
        call.phase = "sent"
        if hedge_after_s is not None and len(call.plan.replicas) > 1:
            reply = await _drive_hedged(call, hedge_after_s)
        elif type(call.feedback) is NoFeedback:
            # No run-time policy: nothing to consult or inform and no retry budget, so the
            # plan is exactly one request to its first replica. This is the hot path of a
            # plain fan-out, kept free of the policy hooks' calls.
            backend: ShardBackend = call.shard.replicas[_start(call, 0)]
            reply = validate_reply(await backend.search(call.query, call.deadline), call.shard.name)
        else:
            reply = await _drive_sequential(call)
    except _CircuitOpen:
        return ShardResult(call.outcome(OutcomeStatus.SKIPPED, clock.now_s(), reason=CIRCUIT_OPEN))
    except ShardTimeout as exc:
        reason = str(exc) or "timeout"
        return ShardResult(call.outcome(OutcomeStatus.TIMEOUT, clock.now_s(), reason=reason))
    except ShardRejected as exc:
        reason = str(exc) or "rejected"
        return ShardResult(call.outcome(OutcomeStatus.REJECTED, clock.now_s(), reason=reason))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ShardResult(call.outcome(OutcomeStatus.ERROR, clock.now_s(), reason=reason))
    finally:
        limit.release()
    # Built directly rather than through call.outcome(): this line runs for every shard
    # that answers, and the keyword plumbing of the general method costs more than the rest.
    hits = reply.hits
    latency_ms = (clock.now_s() - call.started_at_s) * 1000.0
    outcome = ShardOutcome(
        call.shard.name,
        _OK,
        latency_ms if latency_ms > 0.0 else 0.0,
        len(hits),
        reply.docs,
        None,
        call.replica,
        call.hedged,
        call.attempts,
    )
    return ShardResult(outcome, hits)
