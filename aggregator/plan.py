"""Describing a query's work apart from driving it.

A :class:`QueryPlan` is a plain value: which shards a query goes to, which replicas in which
order, when to hedge, and when to give up. A :class:`Planner` makes one from the query, the
cluster and the time; the coordinator executes it. Tests check plans without any I/O.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from aggregator.cluster import Cluster
from aggregator.deadline import Deadline
from aggregator.errors import InvalidQuery
from aggregator.types import Query

__all__ = [
    "CIRCUIT_OPEN",
    "FirstReplicaPlanner",
    "GoodEnough",
    "Planner",
    "QueryPlan",
    "ShardPlan",
]

#: Skip reason of a shard whose every replica has an open circuit breaker.
CIRCUIT_OPEN = "circuit_open"


class ShardPlan(msgspec.Struct, frozen=True):
    """How one shard is queried.

    ``replicas`` are indexes into the shard's replicas, in the order to try them;
    ``hedge_after_s`` (if set) sends a backup copy to the next replica when the first has not
    answered after that many seconds; ``skip_reason`` (if set) means the shard is not queried
    at all and is reported ``skipped`` with that reason.
    """

    shard: str
    replicas: tuple[int, ...]
    hedge_after_s: float | None = None
    skip_reason: str | None = None

    def __post_init__(self) -> None:
        if self.skip_reason is None and not self.replicas:
            raise ValueError(f"plan for shard {self.shard!r} has no replica and no skip reason")
        if self.hedge_after_s is not None and not self.hedge_after_s >= 0:
            raise ValueError(f"hedge delay must be >= 0 s, got {self.hedge_after_s!r}")


class GoodEnough(msgspec.Struct, frozen=True):
    """Stop early: once ``min_coverage`` of the documents answered, wait only
    ``grace_fraction`` of the then-remaining budget for the rest (Vespa's adaptive coverage)."""

    min_coverage: float
    grace_fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.min_coverage <= 1:
            raise InvalidQuery(f"min_coverage must be in (0, 1], got {self.min_coverage!r}")
        if not 0 <= self.grace_fraction <= 1:
            raise InvalidQuery(f"grace fraction must be in [0, 1], got {self.grace_fraction!r}")


class QueryPlan(msgspec.Struct, frozen=True):
    """Everything the coordinator will do for one query, decided before it does any of it."""

    query: Query
    deadline: Deadline
    shards: tuple[ShardPlan, ...]
    good_enough: GoodEnough | None = None


class Planner(Protocol):
    """Makes the plan for a query. Pure: reads only its arguments and its own state."""

    def plan(self, query: Query, deadline: Deadline, cluster: Cluster, now_s: float) -> QueryPlan:
        """The plan for ``query`` on ``cluster`` at ``now_s``."""
        ...


class FirstReplicaPlanner:
    """Every shard, its replicas in configured order, no hedging."""

    __slots__ = ("_cached", "grace_fraction")

    def __init__(self, grace_fraction: float = 0.1) -> None:
        self.grace_fraction = grace_fraction
        # The shard part of the plan depends only on the cluster, and plans are immutable,
        # so it is built once per cluster rather than once per query.
        self._cached: tuple[Cluster, tuple[ShardPlan, ...]] | None = None

    def plan(self, query: Query, deadline: Deadline, cluster: Cluster, now_s: float) -> QueryPlan:
        """All shards, replicas in order; good-enough if the query asks for it."""
        good_enough = (
            None
            if query.min_coverage is None
            else GoodEnough(query.min_coverage, self.grace_fraction)
        )
        cached = self._cached
        if cached is None or cached[0] is not cluster:
            shards = tuple(
                ShardPlan(shard.name, tuple(range(len(shard.replicas)))) for shard in cluster.shards
            )
            cached = self._cached = (cluster, shards)
        return QueryPlan(query, deadline, cached[1], good_enough)
