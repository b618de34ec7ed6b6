"""The HTTP service over replicated shards: per-replica state in /shards and /metrics, and a
dead replica over loopback that queries route around until its breaker opens."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from aggregator import Coordinator, Deadline, Hit, Query, ShardReply
from aggregator.breaker import BreakerConfig
from aggregator.client import HttpShard, ShardClient
from aggregator.retry import RetryConfig
from aggregator.service import create_app
from aggregator.tail import TailConfig, TailTolerantPlanner
from shards.local_cluster import LocalShardCluster
from shards.sim import SimulatedShard
from tests.aggregator.fakes import ScriptedShard

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

#: The keys /shards reports for every replica.
REPLICA_KEYS = {
    "index",
    "label",
    "url",
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


class StuckShard:
    """Never answers until cancelled; counts cancellations."""

    def __init__(self, name: str, docs: int = 100) -> None:
        self.name = name
        self.doc_count = docs
        self.cancelled = 0

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ShardReply(self.name, self.doc_count, (Hit("never", 1.0, self.name),))


async def _get(client: TestClient[web.Request, web.Application], path: str, **kw: Any) -> Any:
    resp = await client.get(path, **kw)
    assert resp.status == 200, await resp.text()
    return orjson.loads(await resp.read())


async def test_shards_show_each_replica_and_a_won_hedge(aiohttp_client: ClientFactory) -> None:
    """A stuck first replica is hedged at once; /shards shows per replica breaker, EWMA,
    outstanding, hedges sent and won, and the shared budget."""
    stuck = StuckShard("s0")
    backends = [stuck, ScriptedShard("s0", 0.0, hits=[("a", 1.0)]), ScriptedShard("s1", 0.0)]
    planner = TailTolerantPlanner(
        TailConfig(selection="round_robin", hedge_after_s=0.0), rng=random.Random(1)
    )
    client = await aiohttp_client(create_app(Coordinator(backends, planner=planner)))

    body = await _get(client, "/search", params={"q": "x", "deadline_ms": "5000"})
    s0 = body["shards"][0]
    assert (s0["status"], s0["replica"], s0["hedged"]) == ("ok", "s0/1", True)
    assert stuck.cancelled == 1

    listed = await _get(client, "/shards")
    first, second = listed["shards"][0]["replicas"]
    assert set(first) == REPLICA_KEYS
    assert (first["label"], first["breaker"], first["outstanding"]) == ("s0/0", "closed", 0)
    assert (first["requests"], first["hedges_sent"], first["hedges_won"]) == (1, 0, 0)
    assert (second["requests"], second["hedges_sent"], second["hedges_won"]) == (1, 1, 1)
    assert second["ewma_latency_ms"] >= 0.0
    assert [r["label"] for r in listed["shards"][1]["replicas"]] == ["s1/0"]
    assert listed["backup_budget"]["backups"] == 1
    assert listed["shards"][0]["hedge_delay_ms"] == 0.0


async def test_metrics_expose_replica_series(aiohttp_client: ClientFactory) -> None:
    """/metrics carries per-replica breaker state, requests, hedges and the budget."""
    backends = [ScriptedShard("s0", 0.0), ScriptedShard("s0", 0.0)]
    planner = TailTolerantPlanner(TailConfig(selection="round_robin"), rng=random.Random(1))
    client = await aiohttp_client(create_app(Coordinator(backends, planner=planner)))
    await _get(client, "/search", params={"q": "x"})
    text = await (await client.get("/metrics")).text()
    assert 'aggregator_replica_breaker_state{replica="0",shard="s0",state="closed"} 1.0' in text
    assert 'aggregator_replica_breaker_state{replica="1",shard="s0",state="open"} 0.0' in text
    assert 'aggregator_replica_requests_total{replica="0",shard="s0"} 1.0' in text
    assert 'aggregator_replica_requests_total{replica="1",shard="s0"} 0.0' in text
    assert 'aggregator_replica_hedges_won_total{replica="0",shard="s0"} 0.0' in text
    assert 'aggregator_replica_failures_total{kind="error",replica="0",shard="s0"} 0.0' in text
    assert "aggregator_replica_ewma_latency_seconds{" in text
    assert "aggregator_replica_outstanding_requests{" in text
    assert "aggregator_backup_primaries_total 1.0" in text
    assert "aggregator_backup_budget_tokens " in text


async def test_without_a_tail_planner_shards_have_no_replica_state(
    aiohttp_client: ClientFactory,
) -> None:
    """The plain coordinator keeps the plain /shards shape and no replica series."""
    client = await aiohttp_client(create_app(Coordinator([ScriptedShard("s0", 0.0)])))
    listed = await _get(client, "/shards")
    assert "backup_budget" not in listed
    assert "replicas" not in listed["shards"][0]
    text = await (await client.get("/metrics")).text()
    assert "aggregator_replica_" not in text


async def test_a_dead_replica_is_routed_around_until_its_breaker_opens(
    aiohttp_client: ClientFactory,
) -> None:
    """Over loopback: one of two replicas refuses connections; every query still answers ok
    from the live one (retried), and after the failure threshold /shards shows it open."""
    docs = 200
    backends = [
        SimulatedShard("s0", docs, "constant:0ms", seed=1, replica="r1"),
        SimulatedShard("s0", docs, "constant:0ms", seed=1, replica="r2"),
    ]
    threshold = 3
    planner = TailTolerantPlanner(
        TailConfig(
            selection="round_robin",
            hedge_percentile=None,
            breaker=BreakerConfig(
                failure_threshold=threshold, cool_down_s=600.0, max_cool_down_s=600.0
            ),
            retry=RetryConfig(base_backoff_s=0.0, max_backoff_s=0.0),
        ),
        rng=random.Random(1),
    )
    async with LocalShardCluster(backends) as cluster, ShardClient() as shard_client:
        await cluster.stop_shard(1)  # its port now refuses connections
        replicas = [HttpShard("s0", url, docs, shard_client) for url in cluster.urls]
        client = await aiohttp_client(create_app(Coordinator(replicas, planner=planner)))
        states: list[str] = []
        for _ in range(4 * threshold):  # round robin: every other query leads with the dead one
            body = await _get(client, "/search", params={"q": "x", "deadline_ms": "5000"})
            outcome = body["shards"][0]
            assert (outcome["status"], outcome["replica"]) == ("ok", "s0/0")
            listed = await _get(client, "/shards")
            states.append(listed["shards"][0]["replicas"][1]["breaker"])
        live, dead = listed["shards"][0]["replicas"]
        assert states[-1] == "open"
        assert states.count("closed") == 2 * threshold - 1  # opened at the threshold-th failure
        assert (dead["url"], dead["breaker_opened"]) == (cluster.urls[1], 1)
        assert dead["requests"] == dead["errors"] == threshold
        assert live["retries"] == threshold
        assert (live["breaker"], live["errors"]) == ("closed", 0)
