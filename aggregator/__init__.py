"""Fan-out/fan-in search aggregator: the coordinator and everything a query passes through.

Layering (each layer imports only those above it):
  errors, clock, deadline           vocabulary, time, budgets
  types, backend, cluster           values and the shard protocol
  merge, completeness, plan         pure core: ranking, accounting, describing work
  limit, feedback                   per-shard bounds; the run-time policy interface
  breaker, hedging, retry,          pure tail-tolerance policies (injected clock)
  replica_selection, tail           ... and the planner that combines them
  dispatch, coordinator             driving a plan against one deadline
  admission, metrics, config        pure admission control; Prometheus; TOML cluster config
  client, service, wire             edges: the shard HTTP client, the HTTP API, the JSON shape
  commands/, local_cluster, _cli    command lines; the built-in local cluster
``aggregator`` never imports ``shards`` except in ``local_cluster`` and ``commands/``, which
wire a local cluster together. This module re-exports the core only, so ``import aggregator``
does not load the HTTP stack.
"""

from aggregator.backend import ShardBackend
from aggregator.clock import Clock, LoopClock, ManualClock
from aggregator.cluster import Cluster, Shard
from aggregator.completeness import account
from aggregator.coordinator import Coordinator, CoordinatorConfig
from aggregator.deadline import Deadline
from aggregator.errors import (
    AggregatorError,
    ConfigError,
    InvalidQuery,
    InvalidSpec,
    NoShardAnswered,
    Overloaded,
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.merge import merge_top_k
from aggregator.plan import FirstReplicaPlanner, GoodEnough, Planner, QueryPlan, ShardPlan
from aggregator.types import (
    Completeness,
    Hit,
    OutcomeStatus,
    Query,
    SearchResponse,
    ShardOutcome,
    ShardReply,
)

__all__ = [
    # errors
    "AggregatorError",
    # values
    "Clock",
    # cluster and protocol
    "Cluster",
    "Completeness",
    "ConfigError",
    # the coordinator
    "Coordinator",
    "CoordinatorConfig",
    "Deadline",
    "FirstReplicaPlanner",
    "GoodEnough",
    "Hit",
    "InvalidQuery",
    "InvalidSpec",
    "LoopClock",
    "ManualClock",
    "NoShardAnswered",
    "OutcomeStatus",
    "Overloaded",
    "Planner",
    "Query",
    "QueryPlan",
    "SearchResponse",
    "Shard",
    "ShardBackend",
    "ShardError",
    "ShardMalformedReply",
    "ShardOutcome",
    "ShardPlan",
    "ShardRejected",
    "ShardReply",
    "ShardTimeout",
    "ShardUnavailable",
    # pure core
    "account",
    "merge_top_k",
]
