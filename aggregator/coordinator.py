"""The coordinator: fan a query out to every shard, fan the answers in before the deadline.

Layering: the planner (pure) decides what to do; :func:`aggregator.dispatch.drive_shard`
runs one shard's part of the plan; this module runs all of them against one deadline, merges
what came back and accounts for what did not.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.backend import ShardBackend
from aggregator.clock import BoundLoopClock, Clock, LoopClock, timer_granularity_s
from aggregator.cluster import Cluster
from aggregator.completeness import account
from aggregator.deadline import Deadline, validate_budget_ms
from aggregator.dispatch import ShardCall, ShardResult, drive_shard
from aggregator.errors import NoShardAnswered
from aggregator.feedback import DispatchFeedback, NoFeedback
from aggregator.limit import CallLimit
from aggregator.merge import merge_top_k
from aggregator.plan import FirstReplicaPlanner, GoodEnough, Planner, QueryPlan
from aggregator.types import OutcomeStatus, Query, SearchResponse, ShardOutcome

__all__ = ["Coordinator", "CoordinatorConfig"]


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Limits and defaults of a coordinator.

    ``default_deadline_ms`` applies to queries that do not carry their own (``None``: no
    limit). ``max_inflight_per_shard`` bounds concurrent calls to each shard across all
    queries; a call over the bound waits for a slot, and that wait counts against its
    deadline (overflow policy: block until the deadline). ``cancel_grace_ms`` is how long the
    coordinator waits, after cancelling stragglers, for them to finish before it answers; a
    straggler slower than that to honour cancellation is tracked, never awaited.

    ``wake_early_ms`` is how long before the deadline the coordinator stops waiting, so that
    its answer (a timer firing late, cancelling the stragglers, merging) lands by the deadline
    rather than just after it; it is capped at a tenth of the query's budget. ``None`` takes
    the running loop's timer granularity (:func:`~aggregator.clock.timer_granularity_s`):
    1 ms on uvloop, 0 on asyncio's loops, so in virtual time the answer comes at exactly the
    deadline. Shards still get the whole budget; one answering inside that last stretch
    is reported as timed out.
    """

    default_deadline_ms: float | None = 1000.0
    max_inflight_per_shard: int = 64
    grace_fraction: float = 0.1
    cancel_grace_ms: float = 0.0
    wake_early_ms: float | None = None

    def __post_init__(self) -> None:
        validate_budget_ms(self.default_deadline_ms, name="default_deadline_ms")
        if self.max_inflight_per_shard < 1:
            raise ValueError("max_inflight_per_shard must be >= 1")
        if not 0 <= self.grace_fraction <= 1:
            raise ValueError("grace_fraction must be in [0, 1]")
        if not 0 <= self.cancel_grace_ms <= 1000:
            raise ValueError("cancel_grace_ms must be in [0, 1000]")
        if self.wake_early_ms is not None and not 0 <= self.wake_early_ms <= 100:
            raise ValueError("wake_early_ms must be in [0, 100] or None")


class _FanIn:
    """Counts answers as they land and opens the gate when the wait should end.

    The gate opens when every dispatched shard has finished, or, in good-enough mode, a
    grace period after the coverage target was reached.
    """

    __slots__ = (
        "_docs_ok",
        "_docs_target",
        "_good_enough",
        "_grace_handle",
        "_loop",
        "_pending",
        "cut_by_grace",
        "deadline",
        "gate",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pending: int,
        deadline: Deadline,
        good_enough: GoodEnough | None,
        docs_total: int,
    ) -> None:
        self._loop = loop
        self._pending = pending
        self._docs_ok = 0
        self._good_enough = good_enough
        self._docs_target = (
            math.inf if good_enough is None else good_enough.min_coverage * docs_total
        )
        self._grace_handle: asyncio.TimerHandle | None = None
        self.cut_by_grace = False
        self.deadline = deadline
        self.gate: asyncio.Future[None] = loop.create_future()
        if pending == 0:
            self.gate.set_result(None)

    def on_done(self, task: asyncio.Task[ShardResult]) -> None:
        self._pending -= 1
        if not task.cancelled():
            outcome = task.result().outcome
            if outcome.status is OutcomeStatus.OK:
                self._docs_ok += outcome.docs
        if self._pending == 0:
            self._open()
        elif self._grace_handle is None and self._docs_ok >= self._docs_target:
            assert self._good_enough is not None
            # Vespa's adaptive coverage: enough of the corpus has answered, so the rest get
            # only a fraction of what is left of the budget instead of all of it.
            now = self._loop.time()
            remaining_s = self.deadline.remaining_s(now)
            if math.isinf(remaining_s):
                grace_s = 0.0
            else:
                grace_s = self._good_enough.grace_fraction * remaining_s
            self._grace_handle = self._loop.call_at(now + grace_s, self._cut)

    def _cut(self) -> None:
        if not self.gate.done():
            self.cut_by_grace = True
        self._open()

    def _open(self) -> None:
        if not self.gate.done():
            self.gate.set_result(None)

    def close(self) -> None:
        if self._grace_handle is not None:
            self._grace_handle.cancel()
        if not self.gate.done():
            self.gate.cancel()


class Coordinator:
    """Answers queries over a cluster within each query's deadline.

    One task per shard; the coordinator waits with :func:`asyncio.wait` until every shard
    answered or the budget ran out, cancels the stragglers, merges what came back into one
    top-k and reports how complete it is. No task outlives the query: stragglers are cancelled
    and, if slow to honour that, tracked in :attr:`lingering_tasks` until they end.

    ``feedback`` is the run-time side of the tail-tolerance policy (breaker admission, hedge
    and retry budget, latency observations); by default the planner itself if it implements
    :class:`~aggregator.feedback.DispatchFeedback`, else none.
    """

    def __init__(
        self,
        shards: Cluster | Sequence[ShardBackend],
        *,
        config: CoordinatorConfig | None = None,
        planner: Planner | None = None,
        clock: Clock | None = None,
        feedback: DispatchFeedback | None = None,
    ) -> None:
        self.cluster = shards if isinstance(shards, Cluster) else Cluster.of(shards)
        self.config = config or CoordinatorConfig()
        self.planner: Planner = planner or FirstReplicaPlanner(self.config.grace_fraction)
        self.clock: Clock = clock or LoopClock()
        if feedback is None:
            feedback = self.planner if isinstance(self.planner, DispatchFeedback) else NoFeedback()
        self.feedback: DispatchFeedback = feedback
        self._limits = {
            s.name: CallLimit(self.config.max_inflight_per_shard) for s in self.cluster.shards
        }
        self._by_name = {s.name: s for s in self.cluster.shards}
        # Shard calls and replica requests cancelled but still unwinding.
        self._lingering: set[asyncio.Task[Any]] = set()

    # -- public API -------------------------------------------------------------------------

    @property
    def lingering_tasks(self) -> int:
        """Cancelled shard calls and replica requests that have not finished unwinding yet."""
        return sum(1 for task in self._lingering if not task.done())

    def deadline_for(self, query: Query, now_s: float | None = None) -> Deadline:
        """The deadline a query gets if it starts at ``now_s`` (default: now)."""
        start = self.clock.now_s() if now_s is None else now_s
        budget = query.deadline_ms if query.deadline_ms is not None else None
        if budget is None:
            budget = self.config.default_deadline_ms
        return Deadline.after(start, budget)

    def plan(self, query: Query, deadline: Deadline | None = None) -> QueryPlan:
        """The plan for ``query``: which shards, which replicas, when to give up."""
        now = self.clock.now_s()
        return self.planner.plan(
            query, deadline or self.deadline_for(query, now), self.cluster, now
        )

    async def search(self, query: Query, deadline: Deadline | None = None) -> SearchResponse:
        """Answer ``query`` by its deadline.

        ``deadline`` overrides the one derived from the query (e.g. a server that started the
        clock when the request arrived). Raises :class:`NoShardAnswered` when no shard
        answered; per-shard failures are reported in the response, never raised.
        """
        return await self.execute(self.plan(query, deadline))

    async def execute(self, plan: QueryPlan) -> SearchResponse:
        """Drive ``plan`` to a response."""
        loop = asyncio.get_running_loop()
        clock = BoundLoopClock(loop) if type(self.clock) is LoopClock else self.clock
        deadline = plan.deadline
        query = plan.query
        by_name = self._by_name
        self._check_covers_cluster(plan)
        feedback = self.feedback
        lingering = self._lingering
        limits = self._limits
        dispatched_at_s = clock.now_s()
        # One slot per shard, in plan order: a finished outcome (skipped shards) or the call
        # and task still to be read.
        slots: list[ShardOutcome | tuple[ShardCall, asyncio.Task[ShardResult]]] = []
        live: list[asyncio.Task[ShardResult]] = []
        for shard_plan in plan.shards:
            shard = by_name[shard_plan.shard]
            if shard_plan.skip_reason is not None:
                slots.append(
                    ShardOutcome(
                        shard.name,
                        OutcomeStatus.SKIPPED,
                        0.0,
                        docs=shard.doc_count,
                        reason=shard_plan.skip_reason,
                        attempts=0,
                    )
                )
                continue
            call = ShardCall(
                shard,
                shard_plan,
                query,
                deadline,
                clock,
                feedback=feedback,
                lingering=lingering,
                started_at_s=dispatched_at_s,
            )
            task = loop.create_task(drive_shard(call, limits[shard.name]))
            slots.append((call, task))
            live.append(task)

        fan_in = _FanIn(loop, len(live), deadline, plan.good_enough, self.cluster.doc_count)
        on_done = fan_in.on_done
        for task in live:
            task.add_done_callback(on_done)
        try:
            if live and not fan_in.gate.done():
                remaining_s = deadline.remaining_s(clock.now_s())
                if math.isinf(remaining_s):
                    timeout_s = None
                else:
                    early_s = self._wake_early_s(loop)
                    if deadline.budget_ms is not None:
                        early_s = min(early_s, 0.1 * deadline.budget_ms / 1000.0)
                    timeout_s = max(0.0, remaining_s - early_s)
                await asyncio.wait((fan_in.gate,), timeout=timeout_s)
        finally:
            fan_in.close()
            stragglers = [t for t in live if not t.done()]
            for task in stragglers:
                task.cancel()
            # Give well-behaved stragglers their one loop turn to unwind, so the common case
            # leaves nothing behind; anything slower is tracked, not awaited.
            if stragglers:
                await self._reap(stragglers)

        now = clock.now_s()
        cut_by_grace = fan_in.cut_by_grace
        final: list[ShardOutcome] = []
        hit_lists = []
        for slot in slots:
            if type(slot) is ShardOutcome:
                final.append(slot)
                continue
            call, task = slot  # type: ignore[misc]
            # drive_shard turns every failure into a result, so a task that finished without
            # being cancelled has one.
            if task.done() and not task.cancelled():
                result = task.result()
                final.append(result.outcome)
                hit_lists.append(result.hits)
            else:
                final.append(call.given_up(now, cut_by_grace=cut_by_grace))
        completeness = account(final, [by_name[o.shard].doc_count for o in final])
        if completeness.shards_ok == 0:
            raise NoShardAnswered(_describe_failure(final), final)
        return SearchResponse(
            hits=tuple(merge_top_k(hit_lists, query.k)),
            completeness=completeness,
            shards=tuple(final),
            took_ms=deadline.elapsed_ms(now),
            deadline_ms=deadline.budget_ms,
        )

    async def aclose(self, timeout_s: float = 1.0) -> int:
        """Wait up to ``timeout_s`` for lingering stragglers; return how many still linger."""
        if self._lingering:
            await asyncio.wait(set(self._lingering), timeout=timeout_s)
        return self.lingering_tasks

    # -- internals --------------------------------------------------------------------------

    def _wake_early_s(self, loop: asyncio.AbstractEventLoop) -> float:
        configured_ms = self.config.wake_early_ms
        return timer_granularity_s(loop) if configured_ms is None else configured_ms / 1000.0

    def _check_covers_cluster(self, plan: QueryPlan) -> None:
        """A plan must name every shard exactly once: a shard left out of it would silently
        vanish from the completeness counts, which must never hide a missing shard."""
        names = [p.shard for p in plan.shards]
        if len(names) != len(self._by_name) or set(names) != self._by_name.keys():
            raise ValueError(
                f"plan must cover every shard exactly once; got {names}, "
                f"cluster has {list(self._by_name)}"
            )

    async def _reap(self, stragglers: list[asyncio.Task[ShardResult]]) -> None:
        try:
            await asyncio.wait(stragglers, timeout=self.config.cancel_grace_ms / 1000.0)
        finally:
            for task in stragglers:
                if not task.done():
                    self._lingering.add(task)
                    task.add_done_callback(self._lingering.discard)


def _describe_failure(outcomes: Sequence[ShardOutcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    first = next((o for o in outcomes if o.reason), None)
    detail = f"; first reason: {first.shard}: {first.reason}" if first else ""
    return f"no shard answered ({summary}){detail}"
