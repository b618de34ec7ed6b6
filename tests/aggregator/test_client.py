"""The HTTP shard client over real loopback sockets: every misbehaviour maps to one ShardError."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from aggregator import (
    ConfigError,
    Coordinator,
    CoordinatorConfig,
    Deadline,
    OutcomeStatus,
    Query,
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.client import (
    DEADLINE_HEADER,
    HttpShard,
    ShardClient,
    ShardClientConfig,
    connect_shards,
    parse_reply,
)
from shards.local_cluster import LocalShardCluster
from shards.sim import simulated_cluster
from tests.aggregator.fakes import ScriptedShard

RawHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
RawServerFactory = Callable[[RawHandler], Awaitable[BaseTestServer]]

GOOD_REPLY = {"shard": "s", "docs": 5, "hits": [{"id": "a", "score": 1.5}], "took_ms": 1.0}


def deadline_in(budget_ms: float) -> Deadline:
    """A deadline ``budget_ms`` from now on the running loop's clock."""
    return Deadline.after(asyncio.get_running_loop().time(), budget_ms)


@pytest.fixture
async def client() -> AsyncIterator[ShardClient]:
    async with ShardClient(ShardClientConfig(max_body_bytes=1024 * 1024)) as shard_client:
        yield shard_client


async def shard_at(
    aiohttp_raw_server: RawServerFactory, handler: RawHandler, client: ShardClient
) -> HttpShard:
    server = await aiohttp_raw_server(handler)
    return HttpShard("s", str(server.make_url("/")), 5, client)


def json_handler(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> RawHandler:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(
            body=body, status=status, headers=headers, content_type="application/json"
        )

    return handler


async def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- happy path ---------------------------------------------------------------------------------


async def test_search_against_a_shard_server(client: ShardClient) -> None:
    """A search through a real shard server returns its hits stamped with the shard's name."""
    backend = ScriptedShard("remote-name", 0.0, docs=9, hits=[("a", 2.0), ("b", 1.0)])
    async with LocalShardCluster([backend]) as cluster:
        shard = HttpShard("s0", cluster.urls[0], 0, client)
        reply = await shard.search(Query("x", k=5), deadline_in(1000))
        assert [(h.doc_id, h.score, h.shard) for h in reply.hits] == [
            ("a", 2.0, "s0"),
            ("b", 1.0, "s0"),
        ]
        assert reply.docs == 9
        assert await shard.probe() == 9
        assert shard.doc_count == 9
    assert client.in_flight() == 0


async def test_request_carries_the_remaining_budget(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """The X-Deadline-Ms header holds the remaining budget: positive, never more than given."""
    seen: list[str] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request.headers[DEADLINE_HEADER])
        assert orjson.loads(await request.read()) == {"q": "hello", "k": 3}
        return web.Response(body=orjson.dumps(GOOD_REPLY), content_type="application/json")

    shard = await shard_at(aiohttp_raw_server, handler, client)
    await shard.search(Query("hello", k=3), deadline_in(750))
    assert 0 < float(seen[0]) <= 750


async def test_spent_budget_sends_nothing(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """With no budget left the client raises ShardTimeout without sending a request."""
    calls: list[int] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        calls.append(1)
        return web.Response(body=orjson.dumps(GOOD_REPLY))

    shard = await shard_at(aiohttp_raw_server, handler, client)
    now = asyncio.get_running_loop().time()
    with pytest.raises(ShardTimeout, match="before the request was sent"):
        await shard.search(Query("x"), Deadline(now - 1.0, now - 0.5))
    assert calls == []


# -- malformed replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"hits": [{"id": "a", "score": NaN}]}', "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"docs": 1, "hits": []}', "'shard'"),
        (b'{"shard": "s", "hits": []}', "'docs'"),
        (b'{"shard": "s", "docs": -1, "hits": []}', "'docs'"),
        (b'{"shard": "s", "docs": true, "hits": []}', "'docs'"),
        (b'{"shard": "s", "docs": 1}', "'hits'"),
        (b'{"shard": "s", "docs": 1, "hits": {}}', "'hits'"),
        (b'{"shard": "s", "docs": 1, "hits": [5]}', "hit 0 must be an object"),
        (b'{"shard": "s", "docs": 1, "hits": [{"score": 1}]}', "'id'"),
        (b'{"shard": "s", "docs": 1, "hits": [{"id": "", "score": 1}]}', "'id'"),
        (b'{"shard": "s", "docs": 1, "hits": [{"id": "a"}]}', "'score'"),
        (b'{"shard": "s", "docs": 1, "hits": [{"id": "a", "score": "1"}]}', "'score'"),
        (b'{"shard": "s", "docs": 1, "hits": [{"id": "a", "score": 1e999}]}', "infinity"),
        (b'{"shard": "s", "docs": 1, "hits": [{"id": "a", "score": 1, "title": 3}]}', "'title'"),
        (b'{"shard": "s", "docs": 1, "hits": [], "took_ms": -4}', "'took_ms'"),
    ],
)
async def test_malformed_replies_are_shard_malformed_reply(
    aiohttp_raw_server: RawServerFactory, client: ShardClient, body: bytes, reason_part: str
) -> None:
    """Invalid JSON, a wrong shape or wrong types become ShardMalformedReply with a reason."""
    shard = await shard_at(aiohttp_raw_server, json_handler(body), client)
    with pytest.raises(ShardMalformedReply, match=reason_part):
        await shard.search(Query("x"), deadline_in(2000))
    assert client.in_flight() == 0


def test_parse_reply_keeps_at_most_k_hits() -> None:
    """A reply with more than k hits is cut to k, best first as sent."""
    hits = [{"id": str(i), "score": float(10 - i)} for i in range(10)]
    body = orjson.dumps({"shard": "x", "docs": 10, "hits": hits})
    reply = parse_reply(body, "s", 3)
    assert [h.doc_id for h in reply.hits] == ["0", "1", "2"]
    assert {h.shard for h in reply.hits} == {"s"}


async def test_advertised_oversized_body_is_refused_unread(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """A reply declaring a 50 MB Content-Length is refused before its body is read."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 50_000_000
        await response.prepare(request)
        await response.write(b"[" * 1024)
        await asyncio.sleep(30)  # cancelled when the client hangs up
        return response

    shard = await shard_at(aiohttp_raw_server, handler, client)
    with pytest.raises(ShardMalformedReply, match="larger than 1048576 bytes"):
        await shard.search(Query("x"), deadline_in(5000))


async def test_streamed_oversized_body_is_cut_at_the_cap(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """A chunked reply growing toward 50 MB is cut once it passes the cap."""
    sent: list[int] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            for _ in range(800):  # 50 MB at most
                await response.write(chunk)
                sent.append(len(chunk))
        except ConnectionError:
            pass
        return response

    shard = await shard_at(aiohttp_raw_server, handler, client)
    with pytest.raises(ShardMalformedReply, match="larger than 1048576 bytes"):
        await shard.search(Query("x"), deadline_in(5000))
    assert sum(sent) < 50_000_000


async def test_compressed_reply_is_refused(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """A reply with a Content-Encoding is refused: the size cap counts uncompressed bytes."""
    handler = json_handler(b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    shard = await shard_at(aiohttp_raw_server, handler, client)
    with pytest.raises(ShardMalformedReply, match="gzip"):
        await shard.search(Query("x"), deadline_in(2000))


async def test_redirect_is_not_followed(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """A redirect is never followed: the client contacts only the configured address."""
    handler = json_handler(b"", 302, {"Location": "http://127.0.0.1:1/search"})
    shard = await shard_at(aiohttp_raw_server, handler, client)
    with pytest.raises(ShardMalformedReply, match="unexpected HTTP status 302"):
        await shard.search(Query("x"), deadline_in(2000))


# -- slow and silent shards ---------------------------------------------------------------------


async def test_slow_drip_is_cut_by_the_deadline(
    aiohttp_raw_server: RawServerFactory, client: ShardClient
) -> None:
    """A reply dripping one byte at a time is cut by the deadline: ShardTimeout."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b" ")
            await asyncio.sleep(0.02)
        return response

    shard = await shard_at(aiohttp_raw_server, handler, client)
    with pytest.raises(ShardTimeout, match="no complete search reply"):
        await shard.search(Query("x"), deadline_in(200))
    assert client.in_flight() == 0


async def test_silent_server_is_a_timeout(client: ShardClient) -> None:
    """A server that accepts and never answers gives ShardTimeout at the deadline."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, client)
        with pytest.raises(ShardTimeout):
            await shard.search(Query("x"), deadline_in(200))
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_connection_closed_without_reply_is_unavailable(client: ShardClient) -> None:
    """A shard that dies after reading the request (killed mid-query) is ShardUnavailable,
    and the query is not sent again on a new connection (only a reused one is retried)."""
    connections: list[int] = []

    async def read_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(read_then_die, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, client)
        with pytest.raises(ShardUnavailable, match="closed the connection before replying"):
            await shard.search(Query("x"), deadline_in(2000))
        assert len(connections) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_body_cut_off_midway_is_unavailable(client: ShardClient) -> None:
    """A reply that stops short of its Content-Length (shard died mid-reply) is unavailable."""

    async def half_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"shard": ')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, client)
        with pytest.raises(ShardUnavailable, match="cut off"):
            await shard.search(Query("x"), deadline_in(2000))
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_instead_of_http_is_malformed(client: ShardClient) -> None:
    """Bytes that are not an HTTP response are ShardMalformedReply."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, client)
        with pytest.raises(ShardMalformedReply, match="invalid HTTP reply"):
            await shard.search(Query("x"), deadline_in(2000))
    finally:
        server.close()
        await server.wait_closed()


# -- unreachable shards and error statuses ------------------------------------------------------


async def test_connection_refused_is_unavailable(client: ShardClient) -> None:
    """Nothing listening on the port: ShardUnavailable naming the connect failure."""
    shard = HttpShard("s", f"http://127.0.0.1:{await free_port()}", 1, client)
    with pytest.raises(ShardUnavailable, match="cannot connect"):
        await shard.search(Query("x"), deadline_in(2000))
    with pytest.raises(ShardUnavailable, match="cannot connect"):
        await shard.probe()
    assert client.in_flight() == 0


@pytest.mark.parametrize(
    ("status", "body", "error", "reason_part"),
    [
        (500, b'{"error": {"type": "RuntimeError", "reason": "boom"}}', ShardUnavailable, "boom"),
        (502, b"<html>bad gateway</html>", ShardUnavailable, "HTTP 502"),
        (503, b'{"error": {"type": "X", "reason": "down"}}', ShardUnavailable, "HTTP 503"),
        (429, b'{"error": {"type": "ShardRejected", "reason": "busy"}}', ShardRejected, "busy"),
        (504, b'{"error": {"type": "ShardTimeout", "reason": "late"}}', ShardTimeout, "504"),
        (400, b'{"error": {"type": "InvalidQuery", "reason": "bad"}}', ShardError, "HTTP 400"),
    ],
)
async def test_error_statuses_map_to_shard_errors(
    aiohttp_raw_server: RawServerFactory,
    client: ShardClient,
    status: int,
    body: bytes,
    error: type[ShardError],
    reason_part: str,
) -> None:
    """500/502/503 are unavailable, 429 rejected, 504 timeout, other 4xx a plain ShardError."""
    shard = await shard_at(aiohttp_raw_server, json_handler(body, status=status), client)
    with pytest.raises(ShardError, match=reason_part) as caught:
        await shard.search(Query("x"), deadline_in(2000))
    assert type(caught.value) is error


# -- lifecycle ----------------------------------------------------------------------------------


async def test_client_reconnects_after_a_shard_restart(client: ShardClient) -> None:
    """A shard stopped and started on the same port is reached again through the same client."""
    async with LocalShardCluster([ScriptedShard("s0", 0.0, hits=[("a", 1.0)])]) as cluster:
        shard = HttpShard("s0", cluster.urls[0], 1, client)
        assert len((await shard.search(Query("x"), deadline_in(2000))).hits) == 1
        await cluster.stop_shard(0)
        with pytest.raises(ShardUnavailable):
            await shard.search(Query("x"), deadline_in(2000))
        await cluster.start_shard(0)
        assert len((await shard.search(Query("x"), deadline_in(2000))).hits) == 1


async def test_cancelling_a_search_drops_in_flight_and_cancels_the_shard(
    client: ShardClient,
) -> None:
    """A cancelled search closes its request: in-flight falls to zero, the shard stops work."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    class Blocking:
        name = "b"
        doc_count = 1

        async def search(self, query: Query, deadline: Deadline) -> Any:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    async with LocalShardCluster([Blocking()]) as cluster:
        shard = HttpShard("b", cluster.urls[0], 1, client)
        task = asyncio.ensure_future(shard.search(Query("x"), deadline_in(10_000)))
        async with asyncio.timeout(5):
            await started.wait()
        assert shard.in_flight == 1
        assert cluster.state(0).in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.in_flight() == 0
        async with asyncio.timeout(5):
            await cancelled.wait()


async def test_closed_client_refuses_requests() -> None:
    """After aclose the client raises instead of reopening a session."""
    shard_client = ShardClient()
    await shard_client.aclose()
    assert shard_client.is_closed
    shard = HttpShard("s", "http://127.0.0.1:1", 1, shard_client)
    with pytest.raises(RuntimeError, match="closed"):
        await shard.search(Query("x"), deadline_in(100))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:80", "http://", "http://h/?q=1"])
def test_bad_shard_urls_are_config_errors(url: str) -> None:
    """A shard URL must be http(s)://host[:port][/path]."""
    with pytest.raises(ConfigError):
        HttpShard("s", url, 1, ShardClient())


def test_config_rejects_nonsense_limits() -> None:
    """Zero or inconsistent pool and body limits are refused."""
    with pytest.raises(ValueError, match="max_connections_per_shard"):
        ShardClientConfig(max_connections_per_shard=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        ShardClientConfig(max_body_bytes=0)
    with pytest.raises(ValueError, match="max_connections"):
        ShardClientConfig(max_connections=1, max_connections_per_shard=2)


async def test_connect_shards_probes_names_and_doc_counts(client: ShardClient) -> None:
    """connect_shards builds one HttpShard per URL from what /healthz reports."""
    backends = [ScriptedShard("alpha", 0.0, docs=3), ScriptedShard("beta", 0.0, docs=4)]
    async with LocalShardCluster(backends) as cluster:
        shards = await connect_shards(cluster.urls, client)
        assert [(s.name, s.doc_count, s.url) for s in shards] == [
            ("alpha", 3, cluster.urls[0]),
            ("beta", 4, cluster.urls[1]),
        ]
        renamed = await connect_shards(cluster.urls, client, names=["a", "b"])
        assert [s.name for s in renamed] == ["a", "b"]
        dead = f"http://127.0.0.1:{await free_port()}"
        with pytest.raises(ShardUnavailable, match=dead):
            await connect_shards([*cluster.urls, dead], client)


# -- end to end ---------------------------------------------------------------------------------


async def test_coordinator_over_http_shards_reports_ok_ok_timeout(client: ShardClient) -> None:
    """A coordinator over three HTTP simulated shards, one slow, answers ok/ok/timeout."""
    backends = simulated_cluster(
        3, "constant:1ms", seed=7, docs_per_shard=100, slow={2: "constant:1s"}
    )
    async with LocalShardCluster(backends) as cluster:
        shards = await connect_shards(cluster.urls, client)
        coordinator = Coordinator(shards, config=CoordinatorConfig(default_deadline_ms=300))
        response = await coordinator.search(Query("find me", k=5))
        statuses = [(o.shard, o.status) for o in response.shards]
        assert statuses == [
            ("shard-00", OutcomeStatus.OK),
            ("shard-01", OutcomeStatus.OK),
            ("shard-02", OutcomeStatus.TIMEOUT),
        ]
        assert response.partial
        assert len(response.hits) == 5
        assert {h.shard for h in response.hits} <= {"shard-00", "shard-01"}
        assert response.completeness.docs_searched == 200
        assert await coordinator.aclose() == 0
        assert client.in_flight() == 0


async def test_probe_has_its_own_bounded_timeout() -> None:
    """A /healthz probe to a silent server ends with ShardTimeout after probe_timeout_s."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ShardClient(ShardClientConfig(probe_timeout_s=0.1)) as shard_client:
            shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, shard_client)
            with pytest.raises(ShardTimeout, match="probe"):
                await shard.probe()
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_library_errors_never_escape(client: ShardClient) -> None:
    """A refused connection surfaces as a ShardError, its OS error kept as the cause."""
    shard = HttpShard("s", f"http://127.0.0.1:{await free_port()}", 1, client)
    with pytest.raises(ShardUnavailable) as caught:
        await shard.search(Query("x"), deadline_in(500))
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_stale_keep_alive_connection_is_retried_once(client: ShardClient) -> None:
    """A reused connection dropped before any reply (a stale keep-alive) is retried once."""
    connections: list[int] = []
    body = orjson.dumps(GOOD_REPLY)
    reply_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        first_connection = len(connections) == 1
        await reader.read(65536)
        writer.write(reply_bytes)  # the first request on every connection is answered
        await writer.drain()
        if first_connection:
            await reader.read(65536)  # the second request on it: drop it unanswered
        writer.close()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        shard = HttpShard("s", f"http://127.0.0.1:{port}", 1, client)
        await shard.search(Query("x"), deadline_in(2000))
        reply = await shard.search(Query("x"), deadline_in(2000))
        assert [h.doc_id for h in reply.hits] == ["a"]
        assert len(connections) == 2
    finally:
        server.close()
        await server.wait_closed()
