"""The coordinator in virtual time: deadlines, cancellation, completeness, good-enough answers."""

from __future__ import annotations

import asyncio
import math

import pytest
import uvloop

from aggregator import (
    Coordinator,
    CoordinatorConfig,
    Deadline,
    Hit,
    NoShardAnswered,
    OutcomeStatus,
    Query,
    ShardRejected,
    ShardReply,
    ShardTimeout,
)
from aggregator.clock import timer_granularity_s
from aggregator.plan import QueryPlan, ShardPlan
from aggregator.wire import response_to_dict
from tests.aggregator.fakes import ScriptedShard


def _shards(*latencies_s: float) -> list[ScriptedShard]:
    return [
        ScriptedShard(f"s{i}", latency, hits=[(f"s{i}-d", float(i + 1))])
        for i, latency in enumerate(latencies_s)
    ]


def _other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


@pytest.mark.looptime
async def test_deadline_cuts_the_slow_shard_at_exactly_the_budget() -> None:
    """10/20/500 ms shards with a 100 ms deadline: two ok, one timeout, answer at 100 ms."""
    loop = asyncio.get_running_loop()
    shards = _shards(0.010, 0.020, 0.500)
    coordinator = Coordinator(shards)
    start = loop.time()
    before = _other_tasks()
    response = await coordinator.search(Query("q", deadline_ms=100))
    assert loop.time() - start == pytest.approx(0.100)
    assert [o.status for o in response.shards] == ["ok", "ok", "timeout"]
    assert [o.latency_ms for o in response.shards] == pytest.approx([10.0, 20.0, 100.0])
    assert response.took_ms == pytest.approx(100.0)
    assert response.deadline_ms == pytest.approx(100.0)
    assert shards[2].cancelled == 1
    assert _other_tasks() == before
    assert coordinator.lingering_tasks == 0


@pytest.mark.looptime
async def test_waking_early_answers_before_the_deadline_and_times_out_late_shards() -> None:
    """With ``wake_early_ms=5`` a 100 ms query answers at 95 ms; a shard due at 97 ms is a
    timeout, one due at 90 ms is ok."""
    loop = asyncio.get_running_loop()
    shards = _shards(0.090, 0.097)
    coordinator = Coordinator(shards, config=CoordinatorConfig(wake_early_ms=5.0))
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=100))
    assert loop.time() - start == pytest.approx(0.095)
    assert [o.status for o in response.shards] == ["ok", "timeout"]
    assert shards[1].cancelled == 1


@pytest.mark.looptime
async def test_waking_early_takes_at_most_a_tenth_of_the_budget() -> None:
    """``wake_early_ms=50`` on a 100 ms query still waits 90 ms: the cap is 10% of the budget."""
    loop = asyncio.get_running_loop()
    coordinator = Coordinator(_shards(0.500), config=CoordinatorConfig(wake_early_ms=50.0))
    start = loop.time()
    with pytest.raises(NoShardAnswered):
        await coordinator.search(Query("q", deadline_ms=100))
    assert loop.time() - start == pytest.approx(0.090)


def test_timer_granularity_is_a_millisecond_on_uvloop_only() -> None:
    """uvloop's libuv timers are whole milliseconds; asyncio's loops are exact enough (0)."""
    uv = uvloop.new_event_loop()
    std = asyncio.new_event_loop()
    try:
        assert timer_granularity_s(uv) == 1e-3
        assert timer_granularity_s(std) == 0.0
    finally:
        uv.close()
        std.close()


@pytest.mark.looptime
async def test_all_answer_before_the_deadline_returns_at_the_last_answer() -> None:
    """When every shard answers, the response comes at the slowest shard, not the deadline."""
    loop = asyncio.get_running_loop()
    coordinator = Coordinator(_shards(0.005, 0.030, 0.012))
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=1000))
    assert loop.time() - start == pytest.approx(0.030)
    assert not response.partial
    assert response.completeness.coverage == 1.0
    assert [h.doc_id for h in response.hits] == ["s2-d", "s1-d", "s0-d"]


@pytest.mark.looptime
async def test_completeness_counts_every_status() -> None:
    """ok, timeout, error and rejected shards are each counted, and coverage uses doc counts."""
    shards = [
        ScriptedShard("ok", 0.001, docs=300, hits=[("a", 1.0)]),
        ScriptedShard("slow", 1.0, docs=100),
        ScriptedShard("boom", 0.001, docs=50, error=RuntimeError("disk on fire")),
        ScriptedShard("busy", 0.001, docs=50, error=ShardRejected("queue full")),
    ]
    response = await Coordinator(shards).search(Query("q", deadline_ms=50))
    c = response.completeness
    assert (c.shards_total, c.shards_ok, c.shards_timed_out, c.shards_failed) == (4, 1, 1, 2)
    assert (c.docs_total, c.docs_searched) == (500, 300)
    assert c.coverage == pytest.approx(0.6)
    assert c.partial
    by_shard = {o.shard: o for o in response.shards}
    assert by_shard["boom"].status is OutcomeStatus.ERROR
    assert by_shard["boom"].reason == "RuntimeError: disk on fire"
    assert by_shard["busy"].status is OutcomeStatus.REJECTED
    assert by_shard["busy"].reason == "queue full"


@pytest.mark.looptime
async def test_shard_reporting_timeout_itself_is_a_timeout() -> None:
    """A backend that raises ShardTimeout (budget spent on its side) is reported as a timeout."""
    shards = [
        ScriptedShard("a", 0.001, hits=[("x", 1.0)]),
        ScriptedShard("b", 0.001, error=ShardTimeout("budget spent")),
    ]
    response = await Coordinator(shards).search(Query("q", deadline_ms=50))
    assert response.shards[1].status is OutcomeStatus.TIMEOUT
    assert response.shards[1].reason == "budget spent"


class _BuildsReply:
    """A backend that builds its reply inside `search` with the given arguments."""

    name = "m"
    doc_count = 10

    def __init__(self, docs: object, hits: object) -> None:
        self.docs = docs
        self.hits = hits

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        return ShardReply("m", self.docs, self.hits)  # type: ignore[arg-type]


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("backend", "reason_part"),
    [
        (ScriptedShard("m", 0.001, reply="not a reply"), "ShardMalformedReply: backend returned"),
        (_BuildsReply(-1, ()), "InvalidReply: document count must be a non-negative"),
        (_BuildsReply(True, ()), "InvalidReply: document count"),
        (_BuildsReply(10, ("x",)), "InvalidReply: hit must be a Hit"),
        (_BuildsReply(10, [Hit("a", 1.0, "m")]), "InvalidReply: hits must be a tuple"),
    ],
)
async def test_malformed_reply_becomes_an_error_outcome(
    backend: ScriptedShard | _BuildsReply, reason_part: str
) -> None:
    """Malformed data from a backend is an error outcome with a reason; the query goes on."""
    shards = [ScriptedShard("good", 0.001, hits=[("a", 1.0)]), backend]
    response = await Coordinator(shards).search(Query("q", deadline_ms=50))
    bad = response.shards[1]
    assert bad.status is OutcomeStatus.ERROR
    assert bad.reason is not None
    assert bad.reason.startswith(reason_part)
    assert [h.doc_id for h in response.hits] == ["a"]


class _NanShard:
    """A backend whose scoring produces NaN: building the hit fails inside `search`."""

    name = "nan"
    doc_count = 10

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        from aggregator import Hit

        return ShardReply(self.name, 10, (Hit("z", math.nan, self.name),))


@pytest.mark.looptime
async def test_non_finite_score_is_malformed() -> None:
    """A NaN score would corrupt the ranking, so that shard's answer is an error outcome."""
    shards = [ScriptedShard("good", 0.001, hits=[("a", 1.0)]), _NanShard()]
    response = await Coordinator(shards).search(Query("q", deadline_ms=50))
    assert response.shards[1].status is OutcomeStatus.ERROR
    assert "InvalidHit" in (response.shards[1].reason or "")
    assert "non-finite" in (response.shards[1].reason or "")
    assert [h.doc_id for h in response.hits] == ["a"]


@pytest.mark.looptime
async def test_hits_are_stamped_with_the_shard_that_answered() -> None:
    """A hit claiming another shard's name is attributed to the shard that returned it."""
    from aggregator import Hit

    shard = ScriptedShard("real", 0.001)
    shard.reply = ShardReply("real", 10, (Hit("d", 1.0, "impostor"),))
    response = await Coordinator([shard]).search(Query("q", deadline_ms=50))
    assert response.hits[0].shard == "real"


@pytest.mark.looptime
async def test_every_shard_failing_raises_instead_of_an_empty_success() -> None:
    """No shard answered: NoShardAnswered carries every outcome; nothing is left running."""
    shards = [
        ScriptedShard("a", 0.001, error=RuntimeError("x")),
        ScriptedShard("b", 5.0),
    ]
    before = _other_tasks()
    with pytest.raises(NoShardAnswered, match=r"no shard answered \(1 error, 1 timeout\)") as info:
        await Coordinator(shards).search(Query("q", deadline_ms=20))
    assert [o.status for o in info.value.outcomes] == ["error", "timeout"]
    assert _other_tasks() == before


@pytest.mark.looptime
async def test_backend_slow_to_honour_cancellation_does_not_delay_the_answer() -> None:
    """A straggler that takes 1 s to unwind is tracked as lingering, not awaited."""
    loop = asyncio.get_running_loop()
    stubborn = ScriptedShard("stubborn", 10.0, ignore_cancel_s=1.0)
    coordinator = Coordinator([ScriptedShard("a", 0.001, hits=[("x", 1.0)]), stubborn])
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=50))
    assert loop.time() - start == pytest.approx(0.050)
    assert response.shards[1].status is OutcomeStatus.TIMEOUT
    assert coordinator.lingering_tasks == 1
    assert await coordinator.aclose(timeout_s=2.0) == 0
    assert stubborn.finished == 1
    assert loop.time() - start == pytest.approx(1.050)


@pytest.mark.looptime
async def test_caller_cancellation_cancels_the_fan_out() -> None:
    """Cancelling the query (client gone) cancels every shard call and leaves no task."""
    shards = _shards(1.0, 2.0, 3.0)
    coordinator = Coordinator(shards)
    before = _other_tasks()
    query_task = asyncio.create_task(coordinator.search(Query("q", deadline_ms=10_000)))
    await asyncio.sleep(0.5)
    query_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query_task
    assert [s.cancelled for s in shards] == [1, 1, 1]
    assert _other_tasks() == before


@pytest.mark.looptime
async def test_good_enough_returns_after_coverage_and_grace() -> None:
    """min_coverage=0.5: after half the docs answered, wait 10% of the remaining budget only."""
    loop = asyncio.get_running_loop()
    shards = [
        ScriptedShard("a", 0.010, docs=100, hits=[("a1", 1.0)]),
        ScriptedShard("b", 0.020, docs=100, hits=[("b1", 2.0)]),
        ScriptedShard("c", 0.900, docs=100),
        ScriptedShard("d", 0.900, docs=100),
    ]
    coordinator = Coordinator(shards, config=CoordinatorConfig(grace_fraction=0.1))
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=1000, min_coverage=0.5))
    # Coverage 0.5 reached at 20 ms; 980 ms remained; grace = 98 ms -> answer at 118 ms.
    assert loop.time() - start == pytest.approx(0.118)
    assert [o.status for o in response.shards] == ["ok", "ok", "timeout", "timeout"]
    assert "min_coverage" in (response.shards[2].reason or "")
    assert response.completeness.coverage == pytest.approx(0.5)


@pytest.mark.looptime
async def test_good_enough_still_takes_a_late_answer_within_grace() -> None:
    """A shard answering inside the grace period is included."""
    loop = asyncio.get_running_loop()
    shards = [
        ScriptedShard("a", 0.010, docs=100, hits=[("a1", 1.0)]),
        ScriptedShard("b", 0.050, docs=100, hits=[("b1", 2.0)]),
    ]
    coordinator = Coordinator(shards, config=CoordinatorConfig(grace_fraction=0.5))
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=1000, min_coverage=0.5))
    assert loop.time() - start == pytest.approx(0.050)
    assert not response.partial


@pytest.mark.looptime
async def test_per_shard_bound_blocks_within_the_deadline() -> None:
    """Calls over the per-shard bound wait for a slot; a wait past the deadline is a timeout."""
    shard = ScriptedShard("only", 0.040, hits=[("x", 1.0)])
    coordinator = Coordinator([shard], config=CoordinatorConfig(max_inflight_per_shard=1))
    first, second = await asyncio.gather(
        coordinator.search(Query("q1", deadline_ms=100)),
        coordinator.search(Query("q2", deadline_ms=30)),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException)
    assert first.shards[0].status is OutcomeStatus.OK
    assert isinstance(second, NoShardAnswered)
    assert second.outcomes[0].reason == "deadline exceeded waiting for a slot to the shard"
    assert second.outcomes[0].attempts == 0


@pytest.mark.looptime
async def test_explicit_deadline_overrides_the_query_budget() -> None:
    """A deadline started earlier (e.g. at request arrival) is the one that holds."""
    loop = asyncio.get_running_loop()
    coordinator = Coordinator(_shards(0.010, 0.500))
    deadline = Deadline.after(loop.time() - 0.070, 100)
    start = loop.time()
    response = await coordinator.search(Query("q", deadline_ms=100), deadline=deadline)
    assert loop.time() - start == pytest.approx(0.030)
    assert response.took_ms == pytest.approx(100.0)


@pytest.mark.looptime
async def test_skipped_shards_are_reported_without_being_called() -> None:
    """A plan that skips a shard reports it `skipped` with its reason and never calls it."""
    shards = _shards(0.001, 0.001)
    coordinator = Coordinator(shards)
    plan = coordinator.plan(Query("q", deadline_ms=50))
    plan = QueryPlan(
        plan.query,
        plan.deadline,
        (plan.shards[0], ShardPlan("s1", (), skip_reason="circuit_open")),
    )
    response = await coordinator.execute(plan)
    assert response.shards[1].status is OutcomeStatus.SKIPPED
    assert response.shards[1].reason == "circuit_open"
    assert shards[1].calls == 0
    assert response.completeness.shards_skipped == 1
    assert response.completeness.coverage == pytest.approx(0.5)


@pytest.mark.looptime
async def test_default_deadline_applies_when_the_query_has_none() -> None:
    """A query without a budget gets the configured default."""
    loop = asyncio.get_running_loop()
    coordinator = Coordinator(
        _shards(0.001, 9.0), config=CoordinatorConfig(default_deadline_ms=250)
    )
    start = loop.time()
    response = await coordinator.search(Query("q"))
    assert loop.time() - start == pytest.approx(0.250)
    assert response.deadline_ms == pytest.approx(250.0)


@pytest.mark.looptime
async def test_same_query_twice_gives_the_same_answer() -> None:
    """The coordinator adds no randomness: equal inputs give equal responses."""
    shards = _shards(0.010, 0.020, 0.300)
    first = await Coordinator(shards).search(Query("q", deadline_ms=100))
    second = await Coordinator(shards).search(Query("q", deadline_ms=100))
    assert response_to_dict(first) == response_to_dict(second)


def test_a_cluster_needs_shards() -> None:
    """An empty cluster is a configuration error, raised at construction."""
    from aggregator import ConfigError

    with pytest.raises(ConfigError, match="at least one shard"):
        Coordinator([])


def test_invalid_config_is_rejected() -> None:
    """Limits out of range are rejected when the config is built."""
    with pytest.raises(ValueError, match="max_inflight_per_shard"):
        CoordinatorConfig(max_inflight_per_shard=0)
    with pytest.raises(ValueError, match="grace_fraction"):
        CoordinatorConfig(grace_fraction=1.5)
    with pytest.raises(ValueError, match="wake_early_ms"):
        CoordinatorConfig(wake_early_ms=-1.0)
