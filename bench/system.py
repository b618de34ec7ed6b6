"""The system a scenario describes: simulated shards, a coordinator, a strategy per run.

Shared by both modes: virtual mode calls the coordinator in process
(:func:`coordinator_target`); socket mode serves the same shards and coordinator over loopback
HTTP in a separate process (:mod:`bench.serve_system`) and drives it with
:class:`bench.loadgen.HttpSearchTarget`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from aggregator.admission import Admission
from aggregator.backend import ShardBackend
from aggregator.coordinator import Coordinator, CoordinatorConfig
from aggregator.errors import NoShardAnswered, Overloaded
from aggregator.plan import Planner
from aggregator.types import Hit, Query, SearchResponse
from bench.capacity import WorkerPool
from bench.loadgen import RequestResult, RequestStatus, Target
from bench.scenario import ClusterConfig, StrategyConfig
from shards.sim import SimulatedShard

__all__ = [
    "MemoShard",
    "build_backends",
    "build_coordinator",
    "build_planner",
    "capacity_per_s",
    "coordinator_target",
    "query_for",
    "result_of",
]


class MemoShard(SimulatedShard):
    """A :class:`shards.sim.SimulatedShard` that computes each query's top-k once.

    A simulated shard's hits are a pure function of (seed, shard, query text, k), so
    remembering them changes no answer; it only saves the per-call scoring, which would
    otherwise dominate the CPU cost of a benchmark that repeats a few query texts. The memo
    is bounded (``MAX_MEMO`` entries, then cleared).
    """

    __slots__ = ("_memo",)

    MAX_MEMO = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memo: dict[tuple[str, int], tuple[Hit, ...]] = {}

    def top_k(self, text: str, k: int) -> tuple[Hit, ...]:
        """The shard's true top ``k`` for ``text``, computed once per (text, k)."""
        key = (text, k)
        hits = self._memo.get(key)
        if hits is None:
            if len(self._memo) >= self.MAX_MEMO:
                self._memo.clear()
            hits = self._memo[key] = super().top_k(text, k)
        return hits


def build_backends(cluster: ClusterConfig, shards: int) -> list[ShardBackend]:
    """``shards`` simulated shards (each with ``cluster.replicas`` copies) as ``cluster`` says.

    Must be called inside the running loop the shards will serve on: degradation windows are
    counted from this moment. Each call draws a fresh latency (``vary_by_call``), seeded, so a
    run is reproducible for a fixed order of calls. With ``cluster.workers`` set, each copy has
    finite capacity (:class:`bench.capacity.WorkerPool`).
    """
    width = max(2, len(str(shards - 1)))  # the names simulated_cluster gives
    backends: list[ShardBackend] = []
    for replica in range(cluster.replicas):
        for i in range(shards):
            # Replicas share name and documents; each draws its own latencies.
            copy = MemoShard(
                f"shard-{i:0{width}d}",
                cluster.docs_per_shard,
                cluster.behaviour_of(i, replica),
                seed=cluster.seed,
                replica=f"r{replica}",
                vary_by_call=True,
            )
            if cluster.workers is None:
                backends.append(copy)
            else:
                backends.append(
                    WorkerPool(copy, workers=cluster.workers, max_queue=cluster.max_queue)
                )
    return backends


def build_planner(strategy: StrategyConfig, seed: int = 0) -> Planner | None:
    """The planner a strategy needs (``None``: the coordinator's default, one request per
    shard to its first replica).

    ``hedged`` uses :class:`aggregator.tail.TailTolerantPlanner`: a backup request to another
    replica after ``hedge_after_ms``, or after the shard's rolling p95 when that is not set;
    backups capped at 5% of primary requests (its defaults). Its random choices are seeded.
    """
    if strategy.kind != "hedged":
        return None
    from aggregator.tail import TailConfig, TailTolerantPlanner

    if strategy.hedge_after_ms is None:
        config = TailConfig()
    else:
        config = TailConfig(hedge_after_s=strategy.hedge_after_ms / 1000.0)
    return TailTolerantPlanner(config, rng=random.Random(seed))


def build_coordinator(
    backends: Sequence[ShardBackend],
    strategy: StrategyConfig,
    *,
    max_inflight_per_shard: int,
    seed: int = 0,
) -> Coordinator:
    """A coordinator over ``backends`` answering as ``strategy`` says."""
    config = CoordinatorConfig(
        default_deadline_ms=strategy.budget_ms, max_inflight_per_shard=max_inflight_per_shard
    )
    return Coordinator(backends, config=config, planner=build_planner(strategy, seed))


def query_for(strategy: StrategyConfig, text: str, k: int) -> Query:
    """The query a strategy sends: its budget, and its coverage target if good-enough."""
    return Query(text, k, deadline_ms=strategy.budget_ms, min_coverage=strategy.min_coverage)


def result_of(response: SearchResponse) -> RequestResult:
    """A :class:`RequestResult` for a coordinator's response."""
    coverage = response.completeness.coverage
    extra = sum(max(0, o.attempts - 1) for o in response.shards)
    status = RequestStatus.PARTIAL if response.partial else RequestStatus.OK
    return RequestResult(status, coverage=coverage, extra_requests=extra)


def coordinator_target(
    coordinator: Coordinator,
    strategy: StrategyConfig,
    texts: Sequence[str],
    k: int,
    admission: Admission | None = None,
) -> Target:
    """A load target calling ``coordinator.search`` in process, one query text in turn.

    As the HTTP service does, each query's deadline starts when it arrives and covers the
    wait for an ``admission`` slot (default: :class:`aggregator.admission.Admission` with the
    service's default limits); a shed query is reported as shed.
    """
    queries = [query_for(strategy, text, k) for text in texts]
    gate = admission or Admission()

    async def target(index: int) -> RequestResult:
        query = queries[index % len(queries)]
        deadline = coordinator.deadline_for(query)
        try:
            async with gate.slot("bench", deadline):
                response = await coordinator.search(query, deadline)
        except NoShardAnswered as exc:
            extra = sum(max(0, o.attempts - 1) for o in exc.outcomes)
            return RequestResult(
                RequestStatus.ERROR, coverage=0.0, extra_requests=extra, reason="no shard answered"
            )
        except Overloaded:
            return RequestResult(RequestStatus.SHED, reason="overloaded")
        return result_of(response)

    return target


def capacity_per_s(cluster: ClusterConfig, mean_latency_s: float) -> float:
    """Queries per second the cluster can serve (``inf`` without a worker limit)."""
    if cluster.workers is None or mean_latency_s <= 0:
        return math.inf
    return cluster.workers / mean_latency_s
