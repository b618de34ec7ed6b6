"""Driving one shard in virtual time: hedges, retries, breakers, cancellation of losers."""

from __future__ import annotations

import asyncio
import random

import pytest

from aggregator import (
    Coordinator,
    Deadline,
    OutcomeStatus,
    Query,
    ShardReply,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.breaker import BreakerConfig
from aggregator.plan import QueryPlan, ShardPlan
from aggregator.retry import RetryConfig
from aggregator.tail import TailConfig, TailTolerantPlanner
from tests.aggregator.fakes import ScriptedShard


class TimedShard(ScriptedShard):
    """A scripted replica that records the loop time of every call it receives."""

    def __init__(self, name: str, latency_s: float, **kwargs: object) -> None:
        super().__init__(name, latency_s, hits=[(f"{name}-doc", 1.0)], **kwargs)  # type: ignore[arg-type]
        self.started_at: list[float] = []

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        self.started_at.append(asyncio.get_running_loop().time())
        return await super().search(query, deadline)


def _other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def _planner(**kwargs: object) -> TailTolerantPlanner:
    defaults: dict[str, object] = {"selection": "round_robin", "hedge_percentile": None}
    defaults.update(kwargs)
    return TailTolerantPlanner(TailConfig(**defaults), rng=random.Random(0))  # type: ignore[arg-type]


def _with_plan(coordinator: Coordinator, query: Query, *shard_plans: ShardPlan) -> QueryPlan:
    plan = coordinator.plan(query)
    return QueryPlan(plan.query, plan.deadline, shard_plans, plan.good_enough)


@pytest.mark.looptime
async def test_hedge_fires_at_exactly_hedge_after_s_and_the_first_answer_wins() -> None:
    """Primary stuck 1 s, hedge sent at 50 ms answers at 60 ms; the primary is cancelled."""
    loop = asyncio.get_running_loop()
    slow, fast = TimedShard("a", 1.0), TimedShard("a", 0.010)
    coordinator = Coordinator([slow, fast])
    start = loop.time()
    before = _other_tasks()
    plan = _with_plan(coordinator, Query("q", deadline_ms=500), ShardPlan("a", (0, 1), 0.050))
    response = await coordinator.execute(plan)
    assert fast.started_at == [pytest.approx(start + 0.050)]
    assert loop.time() - start == pytest.approx(0.060)
    outcome = response.shards[0]
    assert outcome.status is OutcomeStatus.OK
    assert (outcome.replica, outcome.hedged, outcome.attempts) == ("a/1", True, 2)
    assert outcome.latency_ms == pytest.approx(60.0)
    assert slow.cancelled == 1
    assert slow.finished == 1
    assert _other_tasks() == before
    assert coordinator.lingering_tasks == 0


@pytest.mark.looptime
async def test_no_hedge_when_the_primary_answers_in_time() -> None:
    """A primary answering before the hedge delay is the only request."""
    primary, backup = TimedShard("a", 0.030), TimedShard("a", 0.001)
    coordinator = Coordinator([primary, backup])
    plan = _with_plan(coordinator, Query("q", deadline_ms=500), ShardPlan("a", (0, 1), 0.050))
    response = await coordinator.execute(plan)
    outcome = response.shards[0]
    assert (outcome.replica, outcome.hedged, outcome.attempts) == ("a/0", False, 1)
    assert backup.calls == 0


@pytest.mark.looptime
async def test_primary_can_still_win_after_the_hedge_was_sent() -> None:
    """Hedge sent at 20 ms; the primary answers at 25 ms, before the hedge: primary wins."""
    primary, backup = TimedShard("a", 0.025), TimedShard("a", 0.100)
    coordinator = Coordinator([primary, backup])
    plan = _with_plan(coordinator, Query("q", deadline_ms=500), ShardPlan("a", (0, 1), 0.020))
    response = await coordinator.execute(plan)
    outcome = response.shards[0]
    assert (outcome.replica, outcome.hedged, outcome.attempts) == ("a/0", True, 2)
    assert outcome.latency_ms == pytest.approx(25.0)
    assert backup.cancelled == 1


@pytest.mark.looptime
async def test_each_further_delay_sends_the_next_copy() -> None:
    """With three planned copies, backups go out at 1x and 2x the delay."""
    loop = asyncio.get_running_loop()
    r0, r1 = TimedShard("a", 1.0), TimedShard("a", 1.0)
    coordinator = Coordinator([r0, r1, TimedShard("b", 0.001)])
    start = loop.time()
    plan = _with_plan(
        coordinator,
        Query("q", deadline_ms=100),
        ShardPlan("a", (0, 1, 0), 0.020),
        ShardPlan("b", (0,)),
    )
    response = await coordinator.execute(plan)
    assert r0.started_at == [pytest.approx(start), pytest.approx(start + 0.040)]
    assert r1.started_at == [pytest.approx(start + 0.020)]
    outcome = response.shards[0]
    assert outcome.status is OutcomeStatus.TIMEOUT
    assert outcome.attempts == 3


@pytest.mark.looptime
async def test_hedge_budget_refusal_means_no_hedge() -> None:
    """An empty budget refuses the hedge; the call waits for the primary alone."""
    slow, fast = TimedShard("a", 0.200), TimedShard("a", 0.001)
    planner = _planner(hedge_after_s=0.010, backup_share=0.0, backup_burst=1.0)
    planner.budget.try_spend()
    coordinator = Coordinator([slow, fast], planner=planner)
    response = await coordinator.search(Query("q", deadline_ms=500))
    outcome = response.shards[0]
    assert (outcome.replica, outcome.hedged, outcome.attempts) == ("a/0", False, 1)
    assert fast.calls == 0
    assert planner.budget.refused == 1


@pytest.mark.looptime
async def test_planner_hedges_and_reports_the_win() -> None:
    """The tail planner's fixed delay drives the hedge; the win shows in the replica state."""
    slow, fast = TimedShard("a", 1.0), TimedShard("a", 0.005)
    planner = _planner(hedge_after_s=0.010)
    coordinator = Coordinator([slow, fast], planner=planner)
    response = await coordinator.search(Query("q", deadline_ms=500))
    assert response.shards[0].hedged
    states = {s["label"]: s for s in planner.replica_states()}
    assert states["a/1"]["hedges_sent"] == 1
    assert states["a/1"]["hedges_won"] == 1
    assert states["a/0"]["outstanding"] == 0
    assert planner.budget.backups == 1


@pytest.mark.looptime
async def test_a_timeout_is_never_retried() -> None:
    """A replica that reports ShardTimeout is not retried, although a replica and budget remain."""
    timing_out = TimedShard("a", 0.010, error=ShardTimeout("budget spent"))
    spare = TimedShard("a", 0.001)
    coordinator = Coordinator([timing_out, spare, TimedShard("b", 0.001)], planner=_planner())
    response = await coordinator.search(Query("q", deadline_ms=500))
    outcome = response.shards[0]
    assert outcome.status is OutcomeStatus.TIMEOUT
    assert outcome.attempts == 1
    assert spare.calls == 0


@pytest.mark.looptime
async def test_a_hedged_call_never_retries_a_timeout_either() -> None:
    """With hedging on, a copy failing by timeout while no copy is left ends the call."""
    first = TimedShard("a", 0.010, error=ShardTimeout("budget spent"))
    second = TimedShard("a", 0.001)
    coordinator = Coordinator(
        [first, second, TimedShard("b", 0.001)], planner=_planner(hedge_after_s=0.050)
    )
    response = await coordinator.search(Query("q", deadline_ms=500))
    assert response.shards[0].status is OutcomeStatus.TIMEOUT
    assert second.calls == 0


@pytest.mark.looptime
async def test_fast_failure_is_retried_on_the_next_replica_after_a_jittered_backoff() -> None:
    """Refused at 2 ms; the retry goes to the other replica after a backoff within [0, 10 ms]."""
    loop = asyncio.get_running_loop()
    refused = TimedShard("a", 0.002, error=ShardUnavailable("connection refused"))
    healthy = TimedShard("a", 0.005)
    planner = _planner(retry=RetryConfig(base_backoff_s=0.010, max_backoff_s=0.010))
    coordinator = Coordinator([refused, healthy], planner=planner)
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=500))
    outcome = response.shards[0]
    assert outcome.status is OutcomeStatus.OK
    assert (outcome.replica, outcome.attempts, outcome.hedged) == ("a/1", 2, False)
    backoff_s = healthy.started_at[0] - start - 0.002
    assert 0.0 <= backoff_s <= 0.010
    assert planner.replica_states()[1]["retries"] == 1


@pytest.mark.looptime
async def test_no_retry_when_the_backoff_would_end_past_the_deadline() -> None:
    """A backoff that cannot fit in the remaining budget means no retry: error at once."""
    loop = asyncio.get_running_loop()
    refused = TimedShard("a", 0.009, error=ShardUnavailable("reset"))
    healthy = TimedShard("a", 0.001)
    other = TimedShard("b", 0.001)
    planner = _planner(retry=RetryConfig(base_backoff_s=5.0, max_backoff_s=5.0))
    planner.backoff._rng = random.Random(1)  # any draw in [0, 5 s] exceeds the 1 ms left
    coordinator = Coordinator([refused, healthy, other], planner=planner)
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=10))
    assert response.shards[0].status is OutcomeStatus.ERROR
    assert "reset" in (response.shards[0].reason or "")
    assert healthy.calls == 0
    assert loop.time() - start == pytest.approx(0.009)


@pytest.mark.looptime
async def test_retries_stay_within_the_budget() -> None:
    """A budget with one token allows one retry; the next fast failure is not retried."""
    replicas = [
        TimedShard("a", 0.001, error=ShardUnavailable("refused")),
        TimedShard("a", 0.001, error=ShardUnavailable("refused")),
    ]
    planner = _planner(
        backup_share=0.0,
        backup_burst=1.0,
        retry=RetryConfig(base_backoff_s=0.0, max_backoff_s=0.0),
        breaker=BreakerConfig(failure_threshold=100),
    )
    coordinator = Coordinator([*replicas, TimedShard("b", 0.001)], planner=planner)
    first = await coordinator.search(Query("q", deadline_ms=100))
    second = await coordinator.search(Query("q", deadline_ms=100))
    assert first.shards[0].attempts == 2
    assert second.shards[0].attempts == 1
    assert planner.budget.backups == 1
    assert planner.budget.refused == 1


@pytest.mark.looptime
async def test_breaker_opens_then_the_shard_is_skipped_at_once() -> None:
    """Failures open both breakers; the next query skips the shard without waiting or calling."""
    loop = asyncio.get_running_loop()
    broken = [TimedShard("a", 0.001, error=RuntimeError("down")) for _ in range(2)]
    healthy = TimedShard("b", 0.020)
    planner = _planner(
        breaker=BreakerConfig(failure_threshold=2, cool_down_s=1.0),
        retry=RetryConfig(enabled=False),
    )
    coordinator = Coordinator([*broken, healthy], planner=planner)
    for _ in range(4):  # round robin: each replica fails twice
        await coordinator.search(Query("q", deadline_ms=100))
    assert [s["breaker"] for s in planner.replica_states()][:2] == ["open", "open"]
    calls_before = [r.calls for r in broken]
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=100))
    skipped = response.shards[0]
    assert skipped.status is OutcomeStatus.SKIPPED
    assert skipped.reason == "circuit_open"
    assert skipped.latency_ms == 0.0
    assert [r.calls for r in broken] == calls_before
    assert loop.time() - start == pytest.approx(0.020)  # only the healthy shard was waited for
    assert response.completeness.shards_skipped == 1


@pytest.mark.looptime
async def test_half_open_probe_closes_the_breaker_on_success() -> None:
    """After the cool-down one probe goes out; its success closes the breaker."""
    replica = TimedShard("a", 0.001, error=RuntimeError("down"))
    planner = _planner(breaker=BreakerConfig(failure_threshold=1, cool_down_s=1.0))
    coordinator = Coordinator([replica, TimedShard("b", 0.001)], planner=planner)
    await coordinator.search(Query("q", deadline_ms=100))
    assert planner.replica_states()[0]["breaker"] == "open"
    await asyncio.sleep(1.0)
    replica.error = None
    response = await coordinator.search(Query("q", deadline_ms=100))
    assert response.shards[0].status is OutcomeStatus.OK
    assert planner.replica_states()[0]["breaker"] == "closed"


@pytest.mark.looptime
async def test_breaker_opened_mid_plan_refuses_admission() -> None:
    """A plan naming a replica whose breaker opened since is not sent to it: skipped."""
    replica = TimedShard("a", 0.001)
    planner = _planner(breaker=BreakerConfig(failure_threshold=1, cool_down_s=1.0))
    coordinator = Coordinator([replica, TimedShard("b", 0.001)], planner=planner)
    plan = coordinator.plan(Query("q", deadline_ms=100))
    planner.breaker("a", 0).record_failure()
    response = await coordinator.execute(plan)
    assert response.shards[0].status is OutcomeStatus.SKIPPED
    assert response.shards[0].attempts == 0
    assert replica.calls == 0


@pytest.mark.looptime
async def test_caller_cancellation_cancels_every_copy() -> None:
    """Client gone while primary and hedge are in flight: both cancelled, no task left."""
    r0, r1 = TimedShard("a", 5.0), TimedShard("a", 5.0)
    coordinator = Coordinator([r0, r1], planner=_planner(hedge_after_s=0.010))
    before = _other_tasks()
    query_task = asyncio.create_task(coordinator.search(Query("q", deadline_ms=10_000)))
    await asyncio.sleep(0.5)
    assert (r0.calls, r1.calls) == (1, 1)
    query_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query_task
    await asyncio.sleep(0)
    assert (r0.cancelled, r1.cancelled) == (1, 1)
    assert _other_tasks() == before
    assert coordinator.lingering_tasks == 0


@pytest.mark.looptime
async def test_deadline_with_copies_in_flight_is_a_timeout_and_counts_against_them() -> None:
    """Both copies still out at the deadline: timeout outcome; each replica notes a timeout."""
    r0, r1 = TimedShard("a", 5.0), TimedShard("a", 5.0)
    planner = _planner(hedge_after_s=0.010)
    coordinator = Coordinator([r0, r1, TimedShard("b", 0.001)], planner=planner)
    response = await coordinator.search(Query("q", deadline_ms=100))
    await asyncio.sleep(0)
    outcome = response.shards[0]
    assert outcome.status is OutcomeStatus.TIMEOUT
    assert (outcome.hedged, outcome.attempts) == (True, 2)
    assert [s["timeouts"] for s in planner.replica_states()][:2] == [1, 1]
    assert coordinator.lingering_tasks == 0


@pytest.mark.looptime
async def test_loser_slow_to_honour_cancellation_is_tracked_not_awaited() -> None:
    """A losing copy that takes 1 s to unwind does not delay the answer; aclose waits for it."""
    loop = asyncio.get_running_loop()
    stubborn = TimedShard("a", 10.0, ignore_cancel_s=1.0)
    fast = TimedShard("a", 0.010)
    coordinator = Coordinator([stubborn, fast])
    start = loop.time()
    plan = _with_plan(coordinator, Query("q", deadline_ms=500), ShardPlan("a", (0, 1), 0.020))
    response = await coordinator.execute(plan)
    assert loop.time() - start == pytest.approx(0.030)
    assert response.shards[0].replica == "a/1"
    assert coordinator.lingering_tasks == 1
    assert await coordinator.aclose(timeout_s=2.0) == 0
    assert stubborn.finished == 1


@pytest.mark.looptime
async def test_single_replica_shards_are_never_hedged() -> None:
    """A hedge delay on a one-replica plan sends nothing extra."""
    only = TimedShard("a", 0.100)
    coordinator = Coordinator([only])
    plan = _with_plan(coordinator, Query("q", deadline_ms=500), ShardPlan("a", (0,), 0.010))
    response = await coordinator.execute(plan)
    assert (response.shards[0].hedged, response.shards[0].attempts) == (False, 1)
    assert only.calls == 1
