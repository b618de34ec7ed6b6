"""Shard faults over real loopback sockets, end to end through the aggregator's HTTP API.

Each test runs the real stack (service, coordinator, admission, ``HttpShard`` over one
``ShardClient``) in front of two healthy shard servers and one shard that misbehaves: killed
mid-query (a real ``python -m shards serve`` process, SIGKILLed), refusing connections,
answering 500 / 429 / invalid JSON / the wrong shape / a 50 MB body / one byte per second,
accepting and never answering, restarted. For each fault the test pins:

* the misbehaving shard's status and reason in the response, the healthy shards ``ok``;
* a partial 200 answer within the budget, read from the response's own ``took_ms`` and
  ``deadline_ms`` (fast failures are reported before the deadline, silent shards at it);
* a healthy aggregator afterwards: once the shard behaves again, the next query is complete,
  and no shard request or straggler task is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from aggregator import Coordinator, CoordinatorConfig
from aggregator.client import HttpShard, ShardClient
from aggregator.service import create_app
from shards.local_cluster import LocalShardCluster
from shards.sim import simulated_cluster

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

#: The budget of every query here, in ms: small, so the whole file stays fast.
BUDGET_MS = 250.0
#: How far past its budget a response may report itself on a shared, noisy 2-core machine.
#: The tight figure (p99 overrun) is measured by ``python -m bench soak``, not here.
SLACK_MS = 50.0
#: The shard client's default reply cap (``ShardClientConfig.max_body_bytes``).
REPLY_CAP_BYTES = 4 * 1024 * 1024
#: The oversized reply: 50 MB.
HUGE_BYTES = 50 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent

GOOD_REPLY = orjson.dumps(
    {"shard": "flaky", "docs": 10, "hits": [{"id": "flaky-1", "score": 0.5}], "took_ms": 0.1}
)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; the timeout only guards against a hang."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


# -- a shard server that misbehaves on demand ----------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Read one HTTP request (head and body); False when the peer closed instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    try:
        await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return True


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _reply(status: str, body: bytes) -> bytes:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return _head(status, headers) + body


async def _stream_zeros(writer: asyncio.StreamWriter, total: int, *, chunked: bool) -> None:
    """Write ``total`` bytes of a JSON-looking body until done or the peer hangs up."""
    block = b"0" * (64 * 1024)
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            await writer.drain()
            sent += len(block)


class FlakyShard:
    """A shard server on 127.0.0.1 speaking raw HTTP; ``behaviour`` picks its next answer.

    Behaviours: ``ok`` (a valid reply, keep-alive), ``status_500``, ``status_429``,
    ``invalid_json``, ``wrong_shape``, ``huge_declared`` (50 MB with Content-Length),
    ``huge_chunked`` (50 MB, chunked), ``drip`` (one byte per second), ``silent`` (reads the
    request, never answers). :meth:`stop` closes the listener and every connection (the port
    then refuses); :meth:`start` listens again on the same port.
    """

    def __init__(self) -> None:
        self.behaviour = "ok"
        self.port = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while await _read_request(reader):
                self.requests += 1
                if not await self._answer(reader, writer):
                    break
        except ConnectionError:
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request as ``behaviour`` says; True to keep the connection."""
        behaviour = self.behaviour
        if behaviour == "ok":
            writer.write(_reply("200 OK", GOOD_REPLY))
        elif behaviour == "status_500":
            error = {"error": {"type": "RuntimeError", "reason": "disk on fire"}}
            writer.write(_reply("500 Internal Server Error", orjson.dumps(error)))
        elif behaviour == "status_429":
            error = {"error": {"type": "ShardRejected", "reason": "too busy"}}
            writer.write(_reply("429 Too Many Requests", orjson.dumps(error)))
        elif behaviour == "invalid_json":
            writer.write(_reply("200 OK", b'{"shard": "flaky", "docs": 10, "hits": [{"id": '))
        elif behaviour == "wrong_shape":
            writer.write(_reply("200 OK", b'{"shard": "flaky", "docs": "many", "hits": {}}'))
        elif behaviour == "huge_declared":
            headers = {"Content-Type": "application/json", "Content-Length": str(HUGE_BYTES)}
            writer.write(_head("200 OK", headers))
            await _stream_zeros(writer, HUGE_BYTES, chunked=False)
            return False
        elif behaviour == "huge_chunked":
            headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
            writer.write(_head("200 OK", headers))
            await _stream_zeros(writer, HUGE_BYTES, chunked=True)
            return False
        elif behaviour == "drip":
            body = GOOD_REPLY
            headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
            writer.write(_head("200 OK", headers))
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(1.0)
            return False
        elif behaviour == "silent":
            await reader.read()  # until the peer gives up and closes
            return False
        else:  # pragma: no cover - a typo in a test
            raise AssertionError(f"unknown behaviour {behaviour!r}")
        await writer.drain()
        return True


# -- the system under test ---------------------------------------------------------------------


@dataclass
class System:
    """The aggregator (served over loopback) and what stands behind it."""

    client: Client
    shard_client: ShardClient
    coordinator: Coordinator
    flaky: FlakyShard

    async def search(self, budget_ms: float = BUDGET_MS) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(
            "/search", params={"q": "tail latency", "k": "5", "deadline_ms": f"{budget_ms:g}"}
        )
        assert resp.content_type == "application/json"
        body: dict[str, Any] = orjson.loads(await resp.read())
        return resp.status, body

    async def assert_healthy(self, flaky_name: str = "flaky") -> None:
        """The next query is complete, and nothing is left in flight or lingering."""
        status, body = await self.search()
        assert status == 200, body
        assert body["partial"] is False, body["shards"]
        assert {s["shard"]: s["status"] for s in body["shards"]}[flaky_name] == "ok"
        health = await self.client.get("/healthz")
        assert health.status == 200
        await until(lambda: self.shard_client.in_flight() == 0)
        await until(lambda: self.coordinator.lingering_tasks == 0)


def by_shard(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["shard"]: s for s in body["shards"]}


def assert_partial(body: dict[str, Any], *, bad: str, healthy: int = 2) -> None:
    """Only ``bad`` is missing: the healthy shards answered and their hits are merged."""
    assert body["partial"] is True
    assert body["deadline_ms"] == pytest.approx(BUDGET_MS)
    completeness = body["completeness"]
    assert completeness["shards_total"] == healthy + 1
    assert completeness["shards_ok"] == healthy
    assert body["hits"], "the healthy shards' hits are returned"
    assert all(hit["shard"] != bad for hit in body["hits"])
    assert [s["status"] for n, s in by_shard(body).items() if n != bad] == ["ok"] * healthy


@pytest.fixture
async def healthy_cluster() -> AsyncIterator[LocalShardCluster]:
    backends = simulated_cluster(2, "constant:1ms", seed=7, docs_per_shard=100)
    async with LocalShardCluster(backends) as cluster:
        yield cluster


@pytest.fixture
async def system(
    aiohttp_client: ClientFactory, healthy_cluster: LocalShardCluster
) -> AsyncIterator[System]:
    flaky = FlakyShard()
    await flaky.start()
    try:
        async with ShardClient() as shard_client:
            backends = [
                HttpShard(e.name, e.url, e.doc_count, shard_client)
                for e in healthy_cluster.endpoints
            ]
            backends.append(HttpShard("flaky", flaky.url, 10, shard_client))
            coordinator = Coordinator(backends, config=CoordinatorConfig(max_inflight_per_shard=8))
            client = await aiohttp_client(create_app(coordinator))
            yield System(client, shard_client, coordinator, flaky)
            await client.close()
            assert await coordinator.aclose(timeout_s=1.0) == 0
    finally:
        await flaky.stop()


# -- fast failures: reported before the deadline -----------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "reason"),
    [
        ("status_500", "error", "ShardUnavailable: HTTP 500: RuntimeError: disk on fire"),
        ("status_429", "rejected", "shard shed the request: HTTP 429: ShardRejected: too busy"),
        ("invalid_json", "error", "ShardMalformedReply: reply is not valid JSON"),
        ("wrong_shape", "error", "ShardMalformedReply: reply field 'docs' must be a non-negative"),
        (
            "huge_declared",
            "error",
            f"ShardMalformedReply: reply larger than {REPLY_CAP_BYTES} bytes "
            f"(Content-Length: {HUGE_BYTES})",
        ),
        (
            "huge_chunked",
            "error",
            f"ShardMalformedReply: reply larger than {REPLY_CAP_BYTES} bytes",
        ),
    ],
)
async def test_bad_reply_is_an_outcome_and_the_rest_answer(
    system: System, behaviour: str, status: str, reason: str
) -> None:
    """A bad reply is that shard's outcome, with its reason, reported before the deadline."""
    system.flaky.behaviour = behaviour
    code, body = await system.search()
    assert code == 200, body
    assert_partial(body, bad="flaky")
    flaky = by_shard(body)["flaky"]
    assert flaky["status"] == status
    assert flaky["reason"].startswith(reason), flaky["reason"]
    # Not a timeout in disguise: the failure was known, and answered, before the budget ran out.
    assert flaky["latency_ms"] < BUDGET_MS
    assert body["took_ms"] < BUDGET_MS
    system.flaky.behaviour = "ok"
    await system.assert_healthy()


async def test_refused_connection_then_restart(system: System) -> None:
    """A shard that refuses connections is an error at once; once back on its port, it answers."""
    await system.assert_healthy()  # a pooled keep-alive connection now exists
    await system.flaky.stop()
    code, body = await system.search()
    assert code == 200, body
    assert_partial(body, bad="flaky")
    flaky = by_shard(body)["flaky"]
    assert flaky["status"] == "error"
    assert flaky["reason"].startswith("ShardUnavailable: cannot connect to"), flaky["reason"]
    assert body["took_ms"] < BUDGET_MS
    await system.flaky.start()  # same port
    await system.assert_healthy()


# -- silent and slow shards: cut at the deadline -----------------------------------------------


@pytest.mark.parametrize("behaviour", ["silent", "drip"])
async def test_silent_or_dripping_shard_is_cut_at_the_deadline(
    system: System, behaviour: str
) -> None:
    """A shard that never answers, or drips one byte a second, times out; the rest answer."""
    system.flaky.behaviour = behaviour
    code, body = await system.search()
    assert code == 200, body
    assert_partial(body, bad="flaky")
    flaky = by_shard(body)["flaky"]
    assert flaky["status"] == "timeout"
    # Whichever fires first: the coordinator's deadline or the shard client's own timeout.
    reason = flaky["reason"]
    assert reason == "deadline exceeded" or reason.startswith("no complete search reply"), reason
    assert BUDGET_MS - SLACK_MS <= body["took_ms"] <= BUDGET_MS + SLACK_MS
    assert system.flaky.requests == 1
    system.flaky.behaviour = "ok"
    await system.assert_healthy()


async def test_every_shard_silent_is_503_at_the_deadline(
    aiohttp_client: ClientFactory,
) -> None:
    """With no shard answering, the answer is a 503 listing each shard's timeout, not a hang."""
    silent = [FlakyShard(), FlakyShard()]
    for shard in silent:
        shard.behaviour = "silent"
        await shard.start()
    try:
        async with ShardClient() as shard_client:
            backends = [HttpShard(f"s{i}", s.url, 10, shard_client) for i, s in enumerate(silent)]
            client = await aiohttp_client(create_app(Coordinator(backends)))
            resp = await client.get("/search", params={"q": "x", "deadline_ms": "150"})
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            error = orjson.loads(await resp.read())["error"]
            assert error["type"] == "NoShardAnswered"
            assert [s["status"] for s in error["shards"]] == ["timeout", "timeout"]
            await until(lambda: shard_client.in_flight() == 0)
            await client.close()
    finally:
        for shard in silent:
            await shard.stop()


# -- a real shard process, killed and restarted --------------------------------------------------


class ShardProcess:
    """``python -m shards serve --sim 1`` in a child process; one shard, on a chosen port."""

    def __init__(self, latency: str, port: int = 0) -> None:
        self.latency = latency
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self.name = ""
        self.url = ""
        self.docs = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shards",
            "serve",
            "--sim",
            "1",
            "--latency",
            self.latency,
            "--host",
            "127.0.0.1",
            "--base-port",
            str(self.port),
            "--loop",
            "asyncio",
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await self.proc.stdout.readline()).decode().split()
        self.name, self.url, docs = line
        self.docs = int(docs)
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def terminate(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                await self.kill()


@pytest.fixture
async def shard_process() -> AsyncIterator[ShardProcess]:
    process = ShardProcess("constant:10s")
    await process.start()
    try:
        yield process
    finally:
        await process.kill()


async def _system_with(
    aiohttp_client: ClientFactory,
    healthy_cluster: LocalShardCluster,
    shard_client: ShardClient,
    process: ShardProcess,
) -> tuple[Client, Coordinator]:
    backends = [
        HttpShard(e.name, e.url, e.doc_count, shard_client) for e in healthy_cluster.endpoints
    ]
    backends.append(HttpShard("child", process.url, process.docs, shard_client))
    coordinator = Coordinator(backends)
    return await aiohttp_client(create_app(coordinator)), coordinator


async def _search(client: Client, budget_ms: float) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/search", params={"q": "x", "deadline_ms": f"{budget_ms:g}"})
    body: dict[str, Any] = orjson.loads(await resp.read())
    return resp.status, body


async def test_shard_process_killed_mid_query(
    aiohttp_client: ClientFactory,
    healthy_cluster: LocalShardCluster,
    shard_process: ShardProcess,
) -> None:
    """SIGKILL of a shard process with a query in flight: an error outcome at once, not a hang."""
    budget_ms = 2000.0  # room to see the query land before the kill; the answer comes far sooner
    idle_fds = shard_process.open_fds()
    async with ShardClient() as shard_client:
        client, coordinator = await _system_with(
            aiohttp_client, healthy_cluster, shard_client, shard_process
        )
        query = asyncio.create_task(_search(client, budget_ms))
        # In flight: the aggregator sent it, and the shard process accepted the connection.
        await until(lambda: shard_client.in_flight(shard_process.url) == 1)
        await until(lambda: shard_process.open_fds() > idle_fds)
        await shard_process.kill()
        code, body = await query
        assert code == 200, body
        child = by_shard(body)["child"]
        assert child["status"] == "error"
        assert child["reason"].startswith("ShardUnavailable:"), child["reason"]
        assert body["took_ms"] < budget_ms
        assert body["completeness"]["shards_ok"] == 2
        assert body["partial"] is True
        # The aggregator keeps serving: the dead shard is refused at once, the rest answer.
        code, body = await _search(client, BUDGET_MS)
        assert code == 200
        assert by_shard(body)["child"]["reason"].startswith("ShardUnavailable: cannot connect")
        assert body["took_ms"] < BUDGET_MS
        assert shard_client.in_flight() == 0
        await client.close()
        assert await coordinator.aclose() == 0


async def test_shard_process_restarted_is_reconnected(
    aiohttp_client: ClientFactory, healthy_cluster: LocalShardCluster
) -> None:
    """A shard process killed while idle and restarted on its port answers the next query."""
    first = ShardProcess("constant:1ms")
    await first.start()
    second = ShardProcess("constant:1ms", port=first.port)
    try:
        async with ShardClient() as shard_client:
            client, coordinator = await _system_with(
                aiohttp_client, healthy_cluster, shard_client, first
            )
            code, body = await _search(client, BUDGET_MS)
            assert code == 200
            assert body["partial"] is False  # and a keep-alive connection is now pooled
            await first.kill()
            code, body = await _search(client, BUDGET_MS)
            assert code == 200
            assert by_shard(body)["child"]["status"] == "error"
            await second.start()
            assert second.port == first.port
            code, body = await _search(client, BUDGET_MS)
            assert code == 200, body
            assert body["partial"] is False, body["shards"]
            assert by_shard(body)["child"]["status"] == "ok"
            await client.close()
            assert await coordinator.aclose() == 0
    finally:
        await first.kill()
        await second.terminate()
