"""``python -m aggregator serve``: banner, queries, graceful SIGTERM (exit 0), workers, config."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.__main__ import COMMANDS
from aggregator._cli import run_commands
from shards.local_cluster import LocalShardCluster
from shards.sim import SimulatedShard, simulated_cluster

_URL = re.compile(rb"serving (http://127\.0\.0\.1:\d+)")


class Served:
    """A running ``serve`` process and the base URL it printed."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url

    async def stop(self) -> int:
        """SIGTERM, then the exit status (hang guard: 30 s)."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await self.process.wait()


@asynccontextmanager
async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """Start ``python -m aggregator serve --port 0 ARGS`` and wait for its banner."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "serve",
        "--port",
        "0",
        "--loop",
        "asyncio",
        "--log-level",
        "WARNING",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            banner = await process.stdout.readline()
        match = _URL.search(banner)
        assert match is not None, banner
        yield Served(process, match.group(1).decode())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(url, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_builtin_cluster_serves_queries_and_stops_with_status_0() -> None:
    """Without --config: healthz and a query answer (bearer token from the environment);
    SIGTERM ends it with exit status 0."""
    auth = {"Authorization": "Bearer t0ken"}
    async with (
        serve("--simulated", env={"AGGREGATOR_TOKEN": "t0ken"}) as served,
        aiohttp.ClientSession() as session,
    ):
        status, health = await get(session, served.url + "/healthz")
        assert (status, health["status"]) == (200, "ok")
        status, body = await get(session, served.url + "/search", params={"q": "x"})
        assert (status, body["error"]["type"]) == (401, "Unauthorized")
        params = {"q": "asyncio", "k": "3"}
        status, body = await get(session, served.url + "/search", params=params, headers=auth)
        assert status == 200
        assert len(body["hits"]) == 3
        assert body["completeness"]["shards_total"] == health["shards"]
        assert await served.stop() == 0


async def test_sigterm_lets_in_flight_queries_finish(tmp_path: Path) -> None:
    """A query in flight when SIGTERM arrives still gets its answer; the exit status is 0."""
    backends = simulated_cluster(2, "constant:300ms", seed=3, docs_per_shard=20)
    async with LocalShardCluster(backends) as cluster:
        config = _write_config(tmp_path, cluster.urls)
        async with serve("--config", str(config)) as served, aiohttp.ClientSession() as session:
            query = asyncio.ensure_future(
                get(session, served.url + "/search", params={"q": "x", "deadline_ms": "5000"})
            )
            await _until(lambda: all(cluster.state(i).in_flight == 1 for i in range(2)))
            served.process.send_signal(signal.SIGTERM)
            status, body = await query
            assert status == 200
            assert [s["shard"] for s in body["shards"]] == ["alpha", "beta"]
            assert body["partial"] is False
            async with asyncio.timeout(30):
                assert await served.process.wait() == 0


async def test_workers_share_one_port_and_stop_with_status_0() -> None:
    """--workers 2: both answer on the one printed port; SIGTERM to the parent ends all, 0."""
    async with serve("--simulated", "--workers", "2") as served:
        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                status, _ = await get(session, served.url + "/search", params={"q": "x"})
                assert status == 200
        assert await served.stop() == 0


async def test_replicated_config_serves_through_a_dead_replica(tmp_path: Path) -> None:
    """A shard with two replicas, one refusing connections from the start: the service
    starts, answers every query from the live replica, and /shards shows the dead one's
    breaker open after [tail.breaker] failure_threshold failures."""
    backends = [
        SimulatedShard("alpha", 50, "constant:0ms", seed=3, replica=f"r{i}") for i in (1, 2)
    ]
    async with LocalShardCluster(backends) as cluster:
        await cluster.stop_shard(1)
        path = tmp_path / "cluster.toml"
        path.write_text(
            '[[shards]]\nname = "alpha"\n'
            f'replicas = ["{cluster.urls[0]}", "{cluster.urls[1]}"]\n'
            '[tail]\nselection = "round_robin"\nhedging = false\n'
            "[tail.breaker]\nfailure_threshold = 2\ncool_down_ms = 600000\n"
            "max_cool_down_ms = 600000\n",
            encoding="utf-8",
        )
        async with serve("--config", str(path)) as served, aiohttp.ClientSession() as session:
            for _ in range(4):  # round robin: queries 2 and 4 lead with the dead replica
                status, body = await get(session, served.url + "/search", params={"q": "x"})
                assert status == 200
                assert (body["shards"][0]["status"], body["shards"][0]["replica"]) == (
                    "ok",
                    "alpha/0",
                )
            status, listed = await get(session, served.url + "/shards")
            live, dead = listed["shards"][0]["replicas"]
            assert (live["breaker"], dead["breaker"]) == ("closed", "open")
            assert (dead["url"], dead["errors"]) == (cluster.urls[1], 2)
            assert await served.stop() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "/nonexistent/cluster.toml"], "cannot read"),
        (["--workers", "0"], "--workers must be in 1..64"),
        (["--port", "70000"], "--port must be in 0..65535"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: Sequence[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flags or config: one line on stderr, exit status 2, nothing served."""
    code = run_commands("python -m aggregator", "test", COMMANDS, ["serve", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (state in another process has no event to wait on); 10 s hang guard."""
    async with asyncio.timeout(10):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


def _write_config(tmp_path: Path, urls: Sequence[str]) -> Path:
    path = tmp_path / "cluster.toml"
    shards = "".join(
        f'[[shards]]\nname = "{name}"\nurl = "{url}"\n'
        for name, url in zip(("alpha", "beta"), urls, strict=True)
    )
    path.write_text(shards, encoding="utf-8")
    return path
