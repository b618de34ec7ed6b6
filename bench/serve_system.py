"""Serve a scenario's system over loopback, in its own process, for socket-mode runs.

``python -m bench.serve_system '<json>'`` starts one shard server per simulated shard copy
(:class:`shards.local_cluster.LocalShardCluster`) and the aggregator's HTTP service in front of
them (:func:`aggregator.service.create_app` over :class:`aggregator.client.HttpShard`), all on
127.0.0.1 ports chosen by the OS, in one process on one event loop. It prints one JSON line
``{"url": "http://127.0.0.1:PORT/search"}`` on stdout once everything listens, serves until
its stdin closes (so it never outlives the run that started it), then prints one JSON line of
server-side counters and exits 0.

The JSON argument: ``{"cluster": {...ClusterConfig fields}, "shards": N, "strategy":
{...StrategyConfig fields}, "loop": "uvloop"|"asyncio"}``. It is produced by
:func:`system_argument`; it is not a user interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Any

import orjson
from aiohttp import web

from aggregator._cli import run_loop
from aggregator.client import HttpShard, ShardClient, ShardClientConfig
from aggregator.service import ServiceSettings, create_app
from bench.scenario import ClusterConfig, StrategyConfig
from bench.system import build_backends, build_coordinator
from shards.local_cluster import LocalShardCluster

__all__ = ["system_argument"]


def system_argument(
    cluster: ClusterConfig, shards: int, strategy: StrategyConfig, loop: str
) -> str:
    """The command-line argument describing one system to serve."""
    return orjson.dumps(
        {
            "cluster": dataclasses.asdict(cluster),
            "shards": shards,
            "strategy": dataclasses.asdict(strategy),
            "loop": loop,
        }
    ).decode()


def _parse_argument(text: str) -> tuple[ClusterConfig, int, StrategyConfig, str]:
    data = orjson.loads(text)
    raw_cluster = dict(data["cluster"])
    raw_cluster["slow"] = tuple(
        (int(i), None if r is None else int(r), str(spec)) for i, r, spec in raw_cluster["slow"]
    )
    cluster = ClusterConfig(**raw_cluster)
    strategy = StrategyConfig(**data["strategy"])
    return cluster, int(data["shards"]), strategy, str(data["loop"])


async def _wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def serve(cluster: ClusterConfig, shards: int, strategy: StrategyConfig) -> dict[str, Any]:
    """Serve until stdin closes; return server-side counters."""
    backends = build_backends(cluster, shards)
    client_config = ShardClientConfig(max_connections_per_shard=64, max_connections=4096)
    async with (
        LocalShardCluster(backends, max_concurrency=cluster.max_concurrency) as local,
        ShardClient(client_config) as client,
    ):
        remote = [HttpShard(e.name, e.url, e.doc_count, client) for e in local.endpoints]
        coordinator = build_coordinator(
            remote, strategy, max_inflight_per_shard=cluster.max_concurrency
        )
        settings = ServiceSettings(default_deadline_ms=strategy.budget_ms)
        app = create_app(coordinator, settings=settings)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = int(runner.addresses[0][1])
            print(orjson.dumps({"url": f"http://127.0.0.1:{port}/search"}).decode(), flush=True)
            await _wait_for_stdin_eof()
        finally:
            await runner.cleanup()
            await coordinator.aclose(timeout_s=1.0)
        states = [local.state(i) for i in range(len(local))]
        return {
            "shard_requests_served": sum(s.served for s in states),
            "shard_requests_shed": sum(s.shed for s in states),
            "shard_requests_timed_out": sum(s.timed_out for s in states),
            "shard_requests_failed": sum(s.failed for s in states),
        }


def main(argv: list[str]) -> int:
    """Entry point: ``argv[0]`` is the JSON argument."""
    if len(argv) != 1:
        print("usage: python -m bench.serve_system '<json>'", file=sys.stderr)
        return 2
    cluster, shards, strategy, loop = _parse_argument(argv[0])
    counters = run_loop(lambda: serve(cluster, shards, strategy), loop)
    print(orjson.dumps({"counters": counters}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
