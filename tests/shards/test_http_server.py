"""The lean HTTP/1.1 front end (:class:`ShardHttpServer`) over real loopback sockets: what
only it does. Raw bytes, so requests no client library would send reach the server, and
every assertion is on something the socket or the server's counters show (timeouts are
guards only). The protocol itself, on both front ends, is tested in ``test_server.py``."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from aggregator.backend import ShardBackend
from shards.http_server import ShardHttpServer
from shards.server import DEADLINE_HEADER, DEFAULT_MAX_BODY_BYTES, ShardService
from tests.aggregator.fakes import ScriptedShard
from tests.aggregator.raw_http import raw_exchange
from tests.shards.test_server import GatedShard

#: Upper bound on any wait in these tests; a guard against hangs, never a measurement.
GUARD_S = 5.0

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def search_request(q: str = "x", *, deadline_ms: str = "5000", extra: bytes = b"") -> bytes:
    """A well-formed ``POST /search`` with a Content-Length body; ``extra`` is more header
    lines (each ending in CRLF)."""
    body = orjson.dumps({"q": q, "k": 1})
    return b"POST /search HTTP/1.1\r\nHost: t\r\n%s: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        DEADLINE_HEADER.encode(),
        deadline_ms.encode(),
        len(body),
        extra,
        body,
    )


@dataclass(frozen=True)
class Reply:
    """One response as read off the socket (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Raw:
    """One raw client connection: bytes are written exactly as given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self, *, with_body: bool = True) -> Reply:
        """Read the next response (its body too unless ``with_body`` is false, as for HEAD)."""
        async with asyncio.timeout(GUARD_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            size = int(headers.get("content-length", "0")) if with_body else 0
            body = await self.reader.readexactly(size)
        return Reply(status, headers, body)

    async def exchange(self, request: bytes) -> Reply:
        self.send(request)
        return await self.reply()

    async def rest(self) -> bytes:
        """Everything the server still sends until it closes the connection (EOF)."""
        async with asyncio.timeout(GUARD_S):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class Harness:
    """Starts lean servers and opens raw connections; the fixture closes them all."""

    def __init__(self) -> None:
        self.servers: list[ShardHttpServer] = []
        self.conns: list[Raw] = []

    async def start(
        self,
        backend: ShardBackend | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        **limits: Any,
    ) -> ShardHttpServer:
        service = ShardService(
            backend if backend is not None else ScriptedShard("s", 0.0, docs=5, hits=[("d", 1.0)]),
            max_body_bytes=max_body_bytes,
        )
        server = ShardHttpServer(service, host="127.0.0.1", **limits)
        await server.start()
        self.servers.append(server)
        return server

    async def connect(self, server: ShardHttpServer) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        conn = Raw(reader, writer)
        self.conns.append(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self.conns:
            await conn.close()
        for server in self.servers:
            await server.close()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """Lean servers and raw connections, all closed at the end of the test."""
    h = Harness()
    try:
        yield h
    finally:
        await h.aclose()


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (guarded) for a condition on the server's own state."""
    async with asyncio.timeout(GUARD_S):
        while not predicate():  # noqa: ASYNC110 (waits on the server's own state)
            await asyncio.sleep(0.001)


async def assert_refused(port: int) -> None:
    """Nothing listens on ``port`` any more."""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def assert_malformed(reply: Reply, reason_part: str = "") -> None:
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["connection"] == "close"
    error = reply.json()["error"]
    assert error["type"] == "MalformedHttp"
    assert isinstance(error["reason"], str)
    assert error["reason"]
    assert reason_part in error["reason"]


# -- malformed HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"HELLO\x01WORLD\r\n\r\n", id="garbage-request-line"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-hello"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n: no name\r\n\r\n", id="empty-name"),
        pytest.param(b"POST /search HTTP/1.1\r\nContent-Length: -5\r\n\r\n", id="negative-length"),
        pytest.param(
            b"POST /search HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            id="conflicting-lengths",
        ),
        pytest.param(
            b"POST /search HTTP/1.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            id="upgrade",
        ),
        pytest.param(
            b"POST /search HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b'Content-Length: 10\r\n\r\n{"q": "x"}',
            id="upgrade-with-body",
        ),
        pytest.param(b"CONNECT shard:1 HTTP/1.1\r\n\r\n", id="connect"),
    ],
)
async def test_malformed_http_is_400_and_closes(harness: Harness, request_bytes: bytes) -> None:
    """What the parser refuses gets a 400 MalformedHttp JSON error, then the server closes."""
    backend = ScriptedShard("s", 0.0)
    server = await harness.start(backend)
    conn = await harness.connect(server)
    assert_malformed(await conn.exchange(request_bytes))
    assert await conn.rest() == b""
    assert backend.calls == 0
    await until(lambda: server.connections == 0)


async def test_malformed_request_after_a_good_one_closes_the_connection(harness: Harness) -> None:
    """A good request is answered; garbage after it on the same connection is 400 + close."""
    server = await harness.start()
    conn = await harness.connect(server)
    assert (await conn.exchange(HEALTHZ)).status == 200
    assert_malformed(await conn.exchange(b"NOT HTTP AT ALL\r\n\r\n"))
    assert await conn.rest() == b""


async def test_raw_exchange_sees_the_json_error(harness: Harness) -> None:
    """The shared raw helper sees the same JSON error shape for a broken request line."""
    server = await harness.start()
    status, content_type, body = await raw_exchange(server.port, b"\x00\x01\x02\r\n\r\n")
    assert (status, content_type) == (400, "application/json")
    assert orjson.loads(body)["error"]["type"] == "MalformedHttp"


# -- bounds on the request head ---------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", id="header"),
        pytest.param(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", id="url"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(30))
            + b"\r\n",
            id="many-small-headers",
        ),
    ],
)
async def test_head_over_max_head_bytes_is_400(harness: Harness, request_bytes: bytes) -> None:
    """A request head larger than max_head_bytes is 400 MalformedHttp, then the server closes."""
    server = await harness.start(max_head_bytes=1024)
    conn = await harness.connect(server)
    assert_malformed(await conn.exchange(request_bytes), "larger than 1024 bytes")
    assert await conn.rest() == b""


async def test_head_within_max_head_bytes_is_served(harness: Harness) -> None:
    """A head under max_head_bytes is served as usual."""
    server = await harness.start(max_head_bytes=1024)
    conn = await harness.connect(server)
    reply = await conn.exchange(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 800 + b"\r\n\r\n")
    assert reply.status == 200


async def test_unfinished_header_over_max_head_bytes_is_400(harness: Harness) -> None:
    """A header line that never ends is refused once past max_head_bytes, not buffered."""
    server = await harness.start(max_head_bytes=1024)
    conn = await harness.connect(server)
    # Piece by piece, as a slow or hostile client sends it; the line is never finished. The
    # sizes put the limit in the last piece even if the first two reach the server as one
    # read, so nothing is sent after the refusal (which would reset the connection).
    for piece in (b"GET /healthz HTTP/1.1\r\nX-Big: ", b"a" * 100, b"a" * 900, b"a" * 200):
        conn.send(piece)
        # Not a measurement: it lets the server, on this same loop, read each piece alone.
        await asyncio.sleep(0.01)
    assert_malformed(await conn.reply(), "larger than 1024 bytes")
    assert await conn.rest() == b""


async def test_heads_split_across_reads_are_not_refused(harness: Harness) -> None:
    """Heads dripped in pieces, or pipelined with reads ending mid-head, are not refused."""
    server = await harness.start(max_head_bytes=1024)
    conn = await harness.connect(server)
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 800 + b"\r\n\r\n"
    for start in range(0, len(head), 16):
        conn.send(head[start : start + 16])
        await asyncio.sleep(0.001)  # each piece its own read (not a measurement)
    assert (await conn.reply()).status == 200
    stream = b"".join(
        search_request(f"q{i}", extra=b"X-Pad: %s\r\n" % (b"p" * 150)) for i in range(12)
    )
    for start in range(0, len(stream), 97):
        conn.send(stream[start : start + 97])
        await asyncio.sleep(0.001)
    for _ in range(12):
        assert (await conn.reply()).status == 200


async def test_more_than_max_headers_is_400(harness: Harness) -> None:
    """More than max_headers headers is 400 MalformedHttp; exactly max_headers is served."""
    server = await harness.start(max_headers=8)
    conn = await harness.connect(server)
    eight = b"".join(b"X-H%d: v\r\n" % i for i in range(7))  # plus Host
    reply = await conn.exchange(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + eight + b"\r\n")
    assert reply.status == 200
    nine = eight + b"X-H9: v\r\n"
    reply = await conn.exchange(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + nine + b"\r\n")
    assert_malformed(reply, "more than 8 headers")
    assert await conn.rest() == b""


# -- bounds on the request body ---------------------------------------------------------------


async def test_declared_body_over_cap_is_413_before_the_body(harness: Harness) -> None:
    """A Content-Length over max_body_bytes is answered 413 from the head alone, then closed."""
    backend = ScriptedShard("s", 0.0)
    server = await harness.start(backend, max_body_bytes=1024)
    conn = await harness.connect(server)
    reply = await conn.exchange(b"POST /search HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
    assert reply.status == 413
    assert reply.json()["error"]["type"] == "InvalidQuery"
    assert "larger than 1024" in reply.json()["error"]["reason"]
    assert await conn.rest() == b""
    assert backend.calls == 0
    assert server.service.state.failed == 1


async def test_declared_body_over_cap_gets_no_100_continue(harness: Harness) -> None:
    """With Expect: 100-continue, a body over the cap is refused (413) instead of invited."""
    server = await harness.start(max_body_bytes=1024)
    conn = await harness.connect(server)
    reply = await conn.exchange(
        b"POST /search HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    assert reply.status == 413
    assert await conn.rest() == b""


async def test_chunked_body_growing_over_cap_is_413(harness: Harness) -> None:
    """A chunked body is counted as it arrives: past max_body_bytes it is 413, then closed."""
    backend = ScriptedShard("s", 0.0)
    server = await harness.start(backend, max_body_bytes=1024)
    conn = await harness.connect(server)
    chunk = b"320\r\n" + b" " * 800 + b"\r\n"  # 0x320 = 800 bytes
    reply = await conn.exchange(
        b"POST /search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk
    )
    assert reply.status == 413
    assert "larger than 1024" in reply.json()["error"]["reason"]
    assert await conn.rest() == b""
    assert backend.calls == 0


async def test_an_endless_trailer_is_cut_at_the_request_bound(harness: Harness) -> None:
    """A chunked request whose trailer line never ends is refused with 413 once the whole
    request passes twice (max_head_bytes + max_body_bytes), not buffered without bound."""
    backend = ScriptedShard("s", 0.0)
    server = await harness.start(backend, max_body_bytes=1024, max_head_bytes=1024)
    conn = await harness.connect(server)
    conn.send(
        b"POST /search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"q":\r\n5\r\n "x"}\r\n0\r\nX-Trailer: '
    )
    reply = None
    async with asyncio.timeout(GUARD_S):
        for _ in range(64):  # up to 64 KiB, in reads the server takes one at a time
            conn.send(b"a" * 1024)
            await conn.writer.drain()
            await asyncio.sleep(0.001)
            if server.service.state.failed:
                break
        reply = await conn.reply()
    assert reply.status == 413
    assert await conn.rest() == b""
    assert backend.calls == 0


async def test_chunked_body_under_cap_is_served(harness: Harness) -> None:
    """A chunked body within the cap is reassembled and searched."""
    server = await harness.start(max_body_bytes=1024)
    conn = await harness.connect(server)
    reply = await conn.exchange(
        b"POST /search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"q":\r\n5\r\n "x"}\r\n0\r\n\r\n'
    )
    assert reply.status == 200
    assert reply.json()["shard"] == "s"


# -- keep-alive, pipelining, 100-continue -----------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(harness: Harness) -> None:
    """HTTP/1.1 keeps the connection open across requests until Connection: close."""
    server = await harness.start()
    conn = await harness.connect(server)
    for request in (search_request(), HEALTHZ, search_request("y")):
        reply = await conn.exchange(request)
        assert reply.status == 200
        assert "connection" not in reply.headers
    assert server.connections == 1
    reply = await conn.exchange(search_request(extra=b"Connection: close\r\n"))
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert await conn.rest() == b""
    await until(lambda: server.connections == 0)


async def test_http_1_0_without_keep_alive_closes(harness: Harness) -> None:
    """An HTTP/1.0 request without keep-alive gets its reply, then the connection closes."""
    server = await harness.start()
    conn = await harness.connect(server)
    reply = await conn.exchange(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert reply.status == 200
    assert reply.json()["status"] == "ok"
    assert await conn.rest() == b""


async def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    """Requests written at once are answered in order, a quick one waiting for a slow one."""
    backend = GatedShard()
    server = await harness.start(backend)
    conn = await harness.connect(server)
    conn.send(search_request() + HEALTHZ)
    await backend.wait_started(1)
    backend.release.set()
    first, second = await conn.reply(), await conn.reply()
    assert (first.status, first.json()["shard"]) == (200, "gated")
    assert "hits" in first.json()
    assert second.json() == {"status": "ok", "shard": "gated", "docs": 7}


async def test_pipelining_past_max_pipelined_still_answers_everything(harness: Harness) -> None:
    """More pipelined requests than max_pipelined are all still answered, in order."""
    backend = GatedShard()
    server = await harness.start(backend, max_pipelined=2)
    conn = await harness.connect(server)
    conn.send(b"".join(search_request(f"q{i}") + HEALTHZ for i in range(10)))
    await backend.wait_started(1)
    backend.release.set()
    kinds = []
    for _ in range(20):
        reply = await conn.reply()
        assert reply.status == 200
        kinds.append("search" if "hits" in reply.json() else "healthz")
    assert kinds == ["search", "healthz"] * 10
    assert backend.started == 10
    assert (await conn.exchange(HEALTHZ)).status == 200


async def test_expect_100_continue_is_answered_before_the_body(harness: Harness) -> None:
    """Expect: 100-continue gets an interim 100 Continue; the body then gets the final reply."""
    server = await harness.start()
    conn = await harness.connect(server)
    body = b'{"q": "x", "k": 1}'
    conn.send(
        b"POST /search HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with asyncio.timeout(GUARD_S):
        interim = await conn.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    reply = await conn.exchange(body)
    assert reply.status == 200
    assert reply.json()["shard"] == "s"


# -- routing ----------------------------------------------------------------------------------


async def test_head_healthz_has_headers_and_no_body(harness: Harness) -> None:
    """HEAD /healthz gets GET's status and headers (Content-Length included) but no body."""
    server = await harness.start()
    conn = await harness.connect(server)
    conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + HEALTHZ)
    head = await conn.reply(with_body=False)
    # Had a body been sent, the next response would not start right here.
    get = await conn.reply()
    assert head.status == get.status == 200
    assert head.headers["content-type"] == "application/json"
    assert int(head.headers["content-length"]) == len(get.body) > 0
    assert get.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("request_bytes", "status", "type_", "allow"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404, "HTTPNotFound", None),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404, "HTTPNotFound", None),
        (b"GET /search HTTP/1.1\r\n\r\n", 405, "HTTPMethodNotAllowed", "POST"),
        (b"PUT /search HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "HTTPMethodNotAllowed", "POST"),
        (
            b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            405,
            "HTTPMethodNotAllowed",
            "GET, HEAD",
        ),
    ],
)
async def test_unknown_route_and_method_are_json_errors(
    harness: Harness, request_bytes: bytes, status: int, type_: str, allow: str | None
) -> None:
    """404 and 405 (with Allow) are JSON errors, and the connection stays usable."""
    server = await harness.start()
    conn = await harness.connect(server)
    reply = await conn.exchange(request_bytes)
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["error"]["type"] == type_
    assert reply.headers.get("allow") == allow
    assert (await conn.exchange(HEALTHZ)).status == 200


async def test_query_string_is_ignored_in_routing(harness: Harness) -> None:
    """The path is routed without its query string."""
    server = await harness.start()
    conn = await harness.connect(server)
    assert (await conn.exchange(b"GET /healthz?probe=1 HTTP/1.1\r\n\r\n")).status == 200


# -- cancellation and connections ---------------------------------------------------------


async def test_client_disconnect_mid_search_cancels_the_backend(harness: Harness) -> None:
    """A client that closes its socket mid-search cancels the backend and frees the slot."""
    backend = GatedShard()
    server = await harness.start(backend)
    conn = await harness.connect(server)
    conn.send(search_request(deadline_ms="9000"))
    await backend.wait_started(1)
    assert server.service.state.in_flight == 1
    await conn.close()
    async with asyncio.timeout(GUARD_S):
        await backend.cancelled.wait()
    await until(lambda: server.service.state.in_flight == 0 and server.connections == 0)


async def test_max_connections_drops_one_more_at_once(harness: Harness) -> None:
    """With max_connections=1 a second connection is closed at once; the first still works."""
    server = await harness.start(max_connections=1)
    first = await harness.connect(server)
    assert (await first.exchange(HEALTHZ)).status == 200
    second = await harness.connect(server)
    assert await second.rest() == b""
    assert server.connections == 1
    assert (await first.exchange(HEALTHZ)).status == 200
    await first.close()
    await until(lambda: server.connections == 0)
    third = await harness.connect(server)
    assert (await third.exchange(HEALTHZ)).status == 200


async def test_idle_connection_is_closed_after_keepalive(harness: Harness) -> None:
    """A connection idle for keepalive_s (after a reply, or from the start) is closed."""
    server = await harness.start(keepalive_s=0.2)
    used = await harness.connect(server)
    silent = await harness.connect(server)
    assert (await used.exchange(HEALTHZ)).status == 200
    assert await used.rest() == b""
    assert await silent.rest() == b""
    await until(lambda: server.connections == 0)


async def test_dripped_head_is_cut_at_keepalive(harness: Harness) -> None:
    """A request head that never completes does not hold the connection past keepalive_s."""
    server = await harness.start(keepalive_s=0.2)
    conn = await harness.connect(server)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost:")
    assert await conn.rest() == b""


async def test_search_longer_than_keepalive_is_not_cut(harness: Harness) -> None:
    """The idle timer does not run while a search runs on the connection."""
    backend = GatedShard()
    server = await harness.start(backend, keepalive_s=0.2)
    busy = await harness.connect(server)
    busy.send(search_request())
    await backend.wait_started(1)
    # An idle connection opened after the search started is the clock: once the server has
    # closed it, more than keepalive_s has passed with the search running.
    clock = await harness.connect(server)
    assert await clock.rest() == b""
    backend.release.set()
    assert (await busy.reply()).status == 200
    assert not backend.cancelled.is_set()
    assert await busy.rest() == b""  # and then, idle, it is closed in turn


# -- shutdown ---------------------------------------------------------------------------------


async def test_close_lets_a_running_search_finish(harness: Harness) -> None:
    """close() lets a running search send its 200 within shutdown_timeout_s, then closes."""
    backend = GatedShard()
    server = await harness.start(backend, shutdown_timeout_s=GUARD_S * 2)
    busy = await harness.connect(server)
    idle = await harness.connect(server)
    assert (await idle.exchange(HEALTHZ)).status == 200
    busy.send(search_request())
    await backend.wait_started(1)
    closing = asyncio.create_task(server.close())
    assert await idle.rest() == b""
    assert not server.is_serving
    await assert_refused(server.port)
    assert not closing.done()
    backend.release.set()
    assert (await busy.reply()).status == 200
    assert await busy.rest() == b""
    async with asyncio.timeout(GUARD_S):
        await closing
    assert not backend.cancelled.is_set()
    assert server.connections == 0
    assert server.service.state.in_flight == 0
    await assert_refused(server.port)


async def test_close_cancels_a_search_past_shutdown_timeout(harness: Harness) -> None:
    """A search running past shutdown_timeout_s is cancelled, and finished when close() returns."""
    backend = GatedShard()
    server = await harness.start(backend, shutdown_timeout_s=0.1)
    conn = await harness.connect(server)
    conn.send(search_request(deadline_ms="9000"))
    await backend.wait_started(1)
    async with asyncio.timeout(GUARD_S):
        await server.close()
    assert backend.cancelled.is_set()
    assert server.service.state.in_flight == 0
    assert server.connections == 0
    assert await conn.rest() == b""
    await assert_refused(server.port)


async def test_close_is_idempotent(harness: Harness) -> None:
    """close() twice is fine, and a closed server can be started again."""
    server = await harness.start()
    await server.close()
    await server.close()
    assert not server.is_serving
    await server.start()
    conn = await harness.connect(server)
    assert (await conn.exchange(HEALTHZ)).status == 200


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"max_head_bytes": 0},
        {"max_headers": 0},
        {"max_pipelined": 0},
        {"keepalive_s": 0},
        {"keepalive_s": -1.0},
        {"keepalive_s": math.nan},
        {"shutdown_timeout_s": -0.5},
        {"shutdown_timeout_s": math.nan},
    ],
    ids=lambda limits: "{}={}".format(*next(iter(limits.items()))),
)
def test_constructor_rejects_bad_limits(limits: dict[str, Any]) -> None:
    """A non-positive (or NaN) bound is a ValueError naming it."""
    service = ShardService(ScriptedShard("s", 0.0))
    name = next(iter(limits))
    with pytest.raises(ValueError, match=name):
        ShardHttpServer(service, **limits)


def test_constructor_accepts_a_zero_shutdown_timeout() -> None:
    """shutdown_timeout_s=0 is allowed: close() then cancels running searches at once."""
    server = ShardHttpServer(ShardService(ScriptedShard("s", 0.0)), shutdown_timeout_s=0)
    assert server.shutdown_timeout_s == 0
    assert not server.is_serving


async def _stuffed(harness: Harness, server: ShardHttpServer, requests: int) -> Any:
    """A connection whose client pipelines ``requests`` health checks and reads nothing,
    with small socket buffers on both sides; returns the server's side of it once the
    server has paused reading from it."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.port))
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=client)
    conn = Raw(reader, writer)
    harness.conns.append(conn)
    async with asyncio.timeout(GUARD_S):
        while not server._connections:  # noqa: ASYNC110 - no event marks an accept
            await asyncio.sleep(0.001)
    (connection,) = server._connections
    assert connection.transport is not None
    connection.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    writer.transport.set_write_buffer_limits(high=1 << 30)  # the client never blocks
    conn.send(HEALTHZ * requests)
    async with asyncio.timeout(GUARD_S):
        while not connection.write_paused:  # noqa: ASYNC110 - the state has no event
            await asyncio.sleep(0.001)
    return conn, connection


async def test_a_client_that_does_not_read_is_blocked_not_buffered(harness: Harness) -> None:
    """Pipelined requests whose replies are never read stop being read by the server once
    its send buffer is full, so the replies buffered for that client stay bounded."""
    server = await harness.start()
    requests = 40_000  # about 6 MB of replies
    conn, connection = await _stuffed(harness, server, requests)
    buffered = connection.transport.get_write_buffer_size()
    # The high-water mark plus the replies to one read (at most 256 KiB of requests): the
    # bound does not grow with what the client sends.
    assert buffered < 2 * 1024 * 1024
    # Reading everything now gets every reply, in order, and the server reads on.
    for _ in range(requests):
        assert (await conn.reply()).status == 200
    assert not connection.write_paused


async def test_close_does_not_wait_for_a_client_that_does_not_read(harness: Harness) -> None:
    """A closing server drops a connection whose replies are stuck unsent, instead of
    waiting for the client to read them."""
    server = await harness.start()
    await _stuffed(harness, server, 50_000)
    async with asyncio.timeout(GUARD_S):
        await server.close()
    assert server.connections == 0


async def test_a_closing_server_starts_no_new_search(harness: Harness) -> None:
    """While close() drains, the running search's reply is its connection's last: a search
    pipelined behind it is never started."""
    backend = GatedShard()
    server = await harness.start(backend, shutdown_timeout_s=GUARD_S * 2)
    conn = await harness.connect(server)
    conn.send(search_request() + search_request())
    await backend.wait_started(1)
    closing = asyncio.create_task(server.close())
    await asyncio.sleep(0)  # let close() stop the listener
    backend.release.set()
    first = await conn.reply()
    assert first.status == 200
    assert first.headers["connection"] == "close"
    assert await conn.rest() == b""
    async with asyncio.timeout(GUARD_S):
        await closing
    assert backend.started == 1


async def test_http10_keep_alive_is_announced(harness: Harness) -> None:
    """An HTTP/1.0 request asking for keep-alive is told the connection stays open."""
    server = await harness.start()
    conn = await harness.connect(server)
    request = b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    reply = await conn.exchange(request)
    assert reply.status == 200
    assert reply.headers["connection"] == "keep-alive"
    assert (await conn.exchange(request)).status == 200
