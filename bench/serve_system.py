"""Serve a scenario's system over loopback, in processes of its own, for socket-mode runs.

Two roles, each one process on one event loop, so the shards and the aggregator do not share
a CPU and neither shares one with the load generator (the machine has two cores; the generator
is light next to them):

``python -m bench.serve_system shards '<json>'``
    one shard server per simulated shard copy (:class:`shards.local_cluster.LocalShardCluster`)
    on 127.0.0.1 ports chosen by the OS; prints ``{"shards": [[name, url, docs], ...]}``.
``python -m bench.serve_system aggregator '<json>'``
    the aggregator's HTTP service (:func:`aggregator.service.create_app`) over
    :class:`aggregator.client.HttpShard` clients of those shards; prints ``{"url": ...}``.

Each prints its one JSON line on stdout once it listens, serves until its stdin closes (so it
never outlives the run that started it), then prints one JSON line of counters (including the
CPU seconds the process used while serving) and exits 0.
The JSON argument is produced by :func:`system_argument`; it is not a user interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any

import orjson
from aiohttp import web

from aggregator._cli import run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.client import HttpShard, ShardClient, ShardClientConfig
from aggregator.service import ServiceSettings, create_app
from bench.scenario import ClusterConfig, StrategyConfig
from bench.system import build_backends, build_coordinator
from shards.local_cluster import LocalShardCluster

__all__ = ["ROLES", "system_argument"]

#: The processes a socket-mode system is made of.
ROLES = ("shards", "aggregator")


def system_argument(
    cluster: ClusterConfig,
    shards: int,
    strategy: StrategyConfig,
    loop: str,
    endpoints: list[tuple[str, str, int]] | None = None,
) -> str:
    """The command-line argument describing one system (``endpoints``: the shard servers an
    aggregator process should use)."""
    return orjson.dumps(
        {
            "cluster": dataclasses.asdict(cluster),
            "shards": shards,
            "strategy": dataclasses.asdict(strategy),
            "loop": loop,
            "endpoints": endpoints or [],
        }
    ).decode()


@dataclasses.dataclass(frozen=True, slots=True)
class _System:
    cluster: ClusterConfig
    shards: int
    strategy: StrategyConfig
    loop: str
    endpoints: tuple[tuple[str, str, int], ...]


def _parse_argument(text: str) -> _System:
    data = orjson.loads(text)
    raw_cluster = dict(data["cluster"])
    raw_cluster["slow"] = tuple(
        (int(i), None if r is None else int(r), str(spec)) for i, r, spec in raw_cluster["slow"]
    )
    return _System(
        cluster=ClusterConfig(**raw_cluster),
        shards=int(data["shards"]),
        strategy=StrategyConfig(**data["strategy"]),
        loop=str(data["loop"]),
        endpoints=tuple((str(n), str(u), int(d)) for n, u, d in data["endpoints"]),
    )


def _say(obj: Any) -> None:
    print(orjson.dumps(obj).decode(), flush=True)


async def wait_for_stdin_eof() -> None:
    """Return when the parent closes our stdin: how a benchmark tells a server to stop."""
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


async def serve_shards(system: _System) -> dict[str, Any]:
    """Serve the simulated shards until stdin closes; return their counters."""
    backends = build_backends(system.cluster, system.shards)
    async with LocalShardCluster(backends, max_concurrency=system.cluster.max_concurrency) as local:
        freeze_startup_heap()  # as both serve commands do once start-up is done
        _say({"shards": [[e.name, e.url, e.doc_count] for e in local.endpoints]})
        cpu_at_ready_s = time.process_time()
        await wait_for_stdin_eof()
        cpu_s = time.process_time() - cpu_at_ready_s
        states = [local.state(i) for i in range(len(local))]
    return {
        "shards_cpu_s": round(cpu_s, 3),
        "shard_requests_served": sum(s.served for s in states),
        "shard_requests_shed": sum(s.shed for s in states),
        "shard_requests_timed_out": sum(s.timed_out for s in states),
        "shard_requests_failed": sum(s.failed for s in states),
    }


async def serve_aggregator(system: _System) -> dict[str, Any]:
    """Serve the aggregator over the shard servers in ``system.endpoints`` until stdin
    closes; return its counters."""
    client_config = ShardClientConfig(max_connections_per_shard=64, max_connections=4096)
    async with ShardClient(client_config) as client:
        remote = [HttpShard(name, url, docs, client) for name, url, docs in system.endpoints]
        coordinator = build_coordinator(
            remote,
            system.strategy,
            max_inflight_per_shard=system.cluster.max_concurrency,
            seed=system.cluster.seed,
        )
        settings = ServiceSettings(default_deadline_ms=system.strategy.budget_ms)
        app = create_app(coordinator, settings=settings)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            freeze_startup_heap()
            _say({"url": f"http://127.0.0.1:{int(runner.addresses[0][1])}/search"})
            cpu_at_ready_s = time.process_time()
            await wait_for_stdin_eof()
            cpu_s = time.process_time() - cpu_at_ready_s
        finally:
            await runner.cleanup()
            lingering = await coordinator.aclose(timeout_s=1.0)
    return {"aggregator_cpu_s": round(cpu_s, 3), "lingering_shard_calls": lingering}


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` is ``[ROLE, JSON]``."""
    if len(argv) != 2 or argv[0] not in ROLES:
        print("usage: python -m bench.serve_system shards|aggregator '<json>'", file=sys.stderr)
        return 2
    role, system = argv[0], _parse_argument(argv[1])
    serve = serve_shards if role == "shards" else serve_aggregator
    counters = run_loop(lambda: serve(system), system.loop)
    _say({"counters": counters})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
