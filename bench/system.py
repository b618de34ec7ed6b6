"""The system a scenario describes: simulated shards, a coordinator, a strategy per run.

Shared by both modes: virtual mode calls the coordinator in process
(:func:`coordinator_target`); socket mode serves the same shards and coordinator over loopback
HTTP in a separate process (:mod:`bench.serve_system`) and drives it with
:class:`bench.loadgen.HttpSearchTarget`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from aggregator.backend import ShardBackend
from aggregator.coordinator import Coordinator, CoordinatorConfig
from aggregator.errors import ConfigError, NoShardAnswered, Overloaded
from aggregator.plan import Planner
from aggregator.types import Query, SearchResponse
from bench.capacity import WorkerPool
from bench.loadgen import RequestResult, RequestStatus, Target
from bench.scenario import ClusterConfig, StrategyConfig
from shards.sim import simulated_cluster

__all__ = [
    "build_backends",
    "build_coordinator",
    "build_planner",
    "coordinator_target",
    "query_for",
    "result_of",
]


def build_backends(cluster: ClusterConfig, shards: int) -> list[ShardBackend]:
    """``shards`` simulated shards (each with ``cluster.replicas`` copies) as ``cluster`` says.

    Must be called inside the running loop the shards will serve on: degradation windows are
    counted from this moment. Each call draws a fresh latency (``vary_by_call``), seeded, so a
    run is reproducible for a fixed order of calls. With ``cluster.workers`` set, each copy has
    finite capacity (:class:`bench.capacity.WorkerPool`).
    """
    slow = {i: spec for i, spec in cluster.slow if i < shards}
    backends: list[ShardBackend] = []
    for replica in range(cluster.replicas):
        copies = simulated_cluster(
            shards,
            cluster.latency,
            seed=cluster.seed + 1000 * replica,
            docs_per_shard=cluster.docs_per_shard,
            slow=slow,
            vary_by_call=True,
        )
        for copy in copies:
            if cluster.workers is None:
                backends.append(copy)
            else:
                backends.append(
                    WorkerPool(copy, workers=cluster.workers, max_queue=cluster.max_queue)
                )
    return backends


def build_planner(strategy: StrategyConfig) -> Planner | None:
    """The planner a strategy needs (``None``: the coordinator's default).

    ``hedged`` uses :class:`aggregator.TailTolerantPlanner` with the strategy's fixed hedge
    delay, or its adaptive delay when ``hedge_after_ms`` is not set.
    """
    if strategy.kind != "hedged":
        return None
    import aggregator

    TailTolerantPlanner: Any = getattr(aggregator, "TailTolerantPlanner", None)
    if TailTolerantPlanner is None:
        raise ConfigError("strategy 'hedged' needs aggregator.TailTolerantPlanner (not built)")

    if strategy.hedge_after_ms is None:
        planner: Planner = TailTolerantPlanner()
    else:
        planner = TailTolerantPlanner(hedge_after_ms=strategy.hedge_after_ms)
    return planner


def build_coordinator(
    backends: Sequence[ShardBackend], strategy: StrategyConfig, *, max_inflight_per_shard: int
) -> Coordinator:
    """A coordinator over ``backends`` answering as ``strategy`` says."""
    config = CoordinatorConfig(
        default_deadline_ms=strategy.budget_ms, max_inflight_per_shard=max_inflight_per_shard
    )
    return Coordinator(backends, config=config, planner=build_planner(strategy))


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
    coordinator: Coordinator, strategy: StrategyConfig, texts: Sequence[str], k: int
) -> Target:
    """A load target calling ``coordinator.search`` in process, one query text in turn."""
    queries = [query_for(strategy, text, k) for text in texts]

    async def target(index: int) -> RequestResult:
        try:
            response = await coordinator.search(queries[index % len(queries)])
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
