"""The tail-tolerant planner: plans as values, and what it learns from replica requests."""

from __future__ import annotations

import random

import pytest

from aggregator import Cluster, Deadline, Query
from aggregator.breaker import BreakerConfig
from aggregator.clock import ManualClock
from aggregator.feedback import AttemptKind, AttemptResult
from aggregator.plan import CIRCUIT_OPEN, ShardPlan
from aggregator.retry import RetryConfig
from aggregator.tail import TailConfig, TailTolerantPlanner
from tests.aggregator.fakes import ScriptedShard


def _cluster(replicas: dict[str, int]) -> Cluster:
    return Cluster.of(
        ScriptedShard(name, 0.001) for name, count in replicas.items() for _ in range(count)
    )


def _planner(**kwargs: object) -> tuple[TailTolerantPlanner, ManualClock]:
    clock = ManualClock()
    config = TailConfig(**kwargs)  # type: ignore[arg-type]
    return TailTolerantPlanner(config, clock=clock, rng=random.Random(0)), clock


def _plan(
    planner: TailTolerantPlanner, cluster: Cluster, now_s: float = 0.0
) -> tuple[ShardPlan, ...]:
    query = Query("q", deadline_ms=100)
    return planner.plan(query, Deadline.after(now_s, 100), cluster, now_s).shards


def test_fixed_hedge_delay_and_replica_rotation() -> None:
    """Round robin rotates the lead; every multi-replica shard gets the fixed hedge delay."""
    planner, _ = _planner(selection="round_robin", hedge_after_s=0.02, hedge_percentile=None)
    cluster = _cluster({"a": 2, "b": 1})
    first = _plan(planner, cluster)
    second = _plan(planner, cluster)
    assert first == (ShardPlan("a", (0, 1), 0.02), ShardPlan("b", (0,), None))
    assert second[0] == ShardPlan("a", (1, 0), 0.02)


def test_max_attempts_truncates_or_cycles_the_replicas() -> None:
    """Without reuse each replica appears once; with it the order cycles to max_attempts."""
    cluster = _cluster({"a": 2})
    plain, _ = _planner(selection="round_robin", max_attempts=3, hedge_percentile=None)
    reuse, _ = _planner(
        selection="round_robin", max_attempts=3, reuse_replicas=True, hedge_percentile=None
    )
    assert _plan(plain, cluster)[0].replicas == (0, 1)
    assert _plan(reuse, cluster)[0].replicas == (0, 1, 0)
    one, _ = _planner(selection="round_robin", max_attempts=1, hedge_after_s=0.01)
    assert _plan(one, cluster)[0] == ShardPlan("a", (0,), None)


def test_percentile_hedging_waits_for_samples() -> None:
    """No hedge delay until the shard has min_samples latencies, then their percentile."""
    planner, _ = _planner(hedge_percentile=90.0, hedge_min_samples=10)
    cluster = _cluster({"a": 2})
    assert _plan(planner, cluster)[0].hedge_after_s is None
    for i in range(10):
        planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
        planner.on_attempt_end("a", 0, AttemptKind.PRIMARY, AttemptResult.OK, (i + 1) / 100, 0.0)
    assert _plan(planner, cluster)[0].hedge_after_s == pytest.approx(0.09)
    assert planner.hedge_delay_ms("a") == pytest.approx(90.0)


def test_open_breakers_are_left_out_and_all_open_skips_the_shard() -> None:
    """A replica with an open circuit is not planned; all open means skipped, circuit_open."""
    planner, clock = _planner(
        selection="round_robin",
        hedge_after_s=0.01,
        breaker=BreakerConfig(failure_threshold=2, cool_down_s=1.0),
    )
    cluster = _cluster({"a": 2})
    for _ in range(2):
        planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
        planner.on_attempt_end("a", 0, AttemptKind.PRIMARY, AttemptResult.ERROR, 0.001, 0.0)
    assert _plan(planner, cluster)[0] == ShardPlan("a", (1,), None)
    for _ in range(2):
        planner.on_attempt_start("a", 1, AttemptKind.PRIMARY, 0.0)
        planner.on_attempt_end("a", 1, AttemptKind.PRIMARY, AttemptResult.TIMEOUT, 0.1, 0.0)
    assert _plan(planner, cluster)[0] == ShardPlan("a", (), skip_reason=CIRCUIT_OPEN)
    clock.advance(1.0)  # cool-down over: both half-open, each may take a probe
    assert sorted(_plan(planner, cluster)[0].replicas) == [0, 1]


def test_feedback_counts_hedges_retries_and_feeds_the_budget() -> None:
    """Primaries deposit into the budget; hedges and retries are counted per replica."""
    planner, _ = _planner(backup_share=0.5, backup_burst=1.0)
    planner.budget.try_spend()  # empty the bucket
    planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
    assert not planner.try_backup("a", AttemptKind.HEDGE, 0.0)
    planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
    assert planner.try_backup("a", AttemptKind.HEDGE, 0.0)
    planner.on_attempt_start("a", 1, AttemptKind.HEDGE, 0.0)
    planner.on_answer("a", 1, AttemptKind.HEDGE, 0.0)
    planner.on_attempt_start("a", 1, AttemptKind.RETRY, 0.0)
    states = {s["label"]: s for s in planner.replica_states()}
    assert states["a/0"]["requests"] == 2
    assert states["a/0"]["outstanding"] == 2
    assert states["a/1"]["hedges_sent"] == 1
    assert states["a/1"]["hedges_won"] == 1
    assert states["a/1"]["retries"] == 1
    budget = planner.budget_state()
    assert (budget["primaries"], budget["backups"], budget["refused"]) == (2, 2, 1)


def test_retries_can_be_turned_off() -> None:
    """With retries disabled the budget is never asked for a retry."""
    planner, _ = _planner(retry=RetryConfig(enabled=False))
    assert not planner.try_backup("a", AttemptKind.RETRY, 0.0)
    assert planner.budget.backups == 0


def test_replica_states_cover_the_whole_cluster_as_plain_values() -> None:
    """Every replica of the cluster is listed, seen or not, with its breaker and EWMA."""
    planner, _ = _planner()
    planner.on_attempt_start("a", 1, AttemptKind.PRIMARY, 0.0)
    planner.on_attempt_end("a", 1, AttemptKind.PRIMARY, AttemptResult.OK, 0.012, 0.0)
    states = planner.replica_states(_cluster({"a": 2, "b": 1}))
    assert [s["label"] for s in states] == ["a/0", "a/1", "b/0"]
    assert states[1]["ewma_latency_ms"] == pytest.approx(12.0)
    assert states[1]["breaker"] == "closed"
    assert set(states[0]) == {
        "shard",
        "replica",
        "label",
        "breaker",
        "breaker_opened",
        "ewma_latency_ms",
        "outstanding",
        "requests",
        "errors",
        "timeouts",
        "hedges_sent",
        "hedges_won",
        "retries",
    }


def test_cancelled_requests_only_raise_the_latency_estimate() -> None:
    """A copy abandoned after 50 ms lifts a 10 ms EWMA; abandoned after 1 ms it changes nothing."""
    planner, _ = _planner()
    planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
    planner.on_attempt_end("a", 0, AttemptKind.PRIMARY, AttemptResult.OK, 0.010, 0.0)
    planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
    planner.on_attempt_end("a", 0, AttemptKind.PRIMARY, AttemptResult.CANCELLED, 0.001, 0.0)
    assert planner.loads.get("a", 0).ewma_s == pytest.approx(0.010)
    planner.on_attempt_start("a", 0, AttemptKind.PRIMARY, 0.0)
    planner.on_attempt_end("a", 0, AttemptKind.PRIMARY, AttemptResult.CANCELLED, 0.050, 0.0)
    assert planner.loads.get("a", 0).ewma_s == pytest.approx(0.050)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection": "fastest"}, "unknown replica selection"),
        ({"max_attempts": 6}, "max_attempts"),
        ({"hedge_percentile": 100.0}, "hedge_percentile"),
        ({"backup_share": -0.1}, "backup_share"),
        ({"hedge_after_s": -1.0}, "hedge_after_s"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, object], message: str) -> None:
    """Settings out of range raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=message):
        TailConfig(**kwargs)  # type: ignore[arg-type]
