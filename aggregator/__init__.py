"""Fan-out/fan-in search aggregator: the coordinator and everything a query passes through.

Layering (each layer imports only those above it):
  errors, clock, deadline      vocabulary, time, budgets
  types, backend, cluster      values and the shard protocol
  merge, completeness, plan    pure core: ranking, accounting, describing work
  dispatch, coordinator        driving a plan against one deadline
  wire, cli                    edges: JSON shape, command line
``aggregator`` never imports ``shards`` except in the CLI, which wires a local cluster.
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
