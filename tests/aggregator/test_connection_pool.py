"""The HTTP/1.1 connection pool over real loopback sockets: bounds, reuse, framing, closing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from aggregator.connection_pool import ConnectionPool, HttpReply
from aggregator.errors import ShardMalformedReply, ShardUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CAP_BYTES = 1024


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server on loopback running ``handler`` per connection; yields its URL."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition()`` holds (failing after 5 s): for socket events."""
    async with asyncio.timeout(5):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.002)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head (these tests send no body); b'' once the client closed."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection with OK_REPLY until the client closes."""
    while await read_request(reader):
        writer.write(OK_REPLY)
        await writer.drain()


async def get(pool: ConnectionPool, url: str, path: str = "/x") -> bytes:
    reply = await pool.request(
        url, b"GET", path, b"", None, max_body_bytes=CAP_BYTES, max_error_body_bytes=16
    )
    assert reply.status == 200, reply
    return reply.body


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    connection_pool = ConnectionPool(max_per_origin=2, max_total=4, keepalive_s=30.0)
    yield connection_pool
    await connection_pool.aclose()


async def test_sequential_requests_reuse_one_connection(pool: ConnectionPool) -> None:
    """Keep-alive: ten requests in a row travel over a single connection."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await answer_each(reader, writer)

    async with serving(handler) as url:
        for _ in range(10):
            assert await get(pool, url) == b"ok"
        assert len(connections) == 1
        assert pool.open_connections(url) == 1


async def test_a_reply_says_when_its_last_byte_was_parsed(pool: ConnectionPool) -> None:
    """``completed_at_s`` is on ``time.perf_counter``, after the request was sent and no later
    than the awaiting caller sees the reply."""
    async with serving(answer_each) as url:
        sent_s = time.perf_counter()
        reply = await pool.request(
            url, b"GET", "/x", b"", None, max_body_bytes=CAP_BYTES, max_error_body_bytes=16
        )
        seen_s = time.perf_counter()
    assert reply.body == b"ok"
    assert sent_s < reply.completed_at_s <= seen_s


async def test_connections_per_origin_are_bounded(pool: ConnectionPool) -> None:
    """Six concurrent requests, a bound of two: never more than two connections, all answered."""
    open_now = 0
    most_open = 0
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most_open
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            while await read_request(reader):
                await release.wait()
                writer.write(OK_REPLY)
                await writer.drain()
        finally:
            open_now -= 1

    async with serving(handler) as url:
        requests = [asyncio.ensure_future(get(pool, url)) for _ in range(6)]
        await until(lambda: most_open == 2)
        assert pool.open_connections(url) == 2
        release.set()
        async with asyncio.timeout(5):
            assert await asyncio.gather(*requests) == [b"ok"] * 6
        assert most_open == 2


async def test_total_bound_closes_an_idle_connection_of_another_origin() -> None:
    """At the total bound, a new origin takes the place of another origin's idle connection."""
    pool = ConnectionPool(max_per_origin=1, max_total=1, keepalive_s=30.0)
    try:
        async with serving(answer_each) as first, serving(answer_each) as second:
            assert await get(pool, first) == b"ok"
            assert await get(pool, second) == b"ok"
            assert pool.open_connections(first) == 0
            assert pool.open_connections(second) == 1
            assert pool.open_connections() == 1
    finally:
        await pool.aclose()


async def test_idle_connections_close_after_keepalive() -> None:
    """A connection idle for longer than keepalive_s is closed and no longer counted."""
    pool = ConnectionPool(max_per_origin=2, max_total=2, keepalive_s=0.01)
    try:
        async with serving(answer_each) as url:
            assert await get(pool, url) == b"ok"
            await until(lambda: pool.open_connections(url) == 0)
            assert await get(pool, url) == b"ok"  # and a new one is opened on demand
    finally:
        await pool.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok",  # framed by the end of the stream
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["chunked", "until-close", "http-1.0"],
)
async def test_reply_framings(pool: ConnectionPool, reply: bytes) -> None:
    """Chunked, close-delimited and HTTP/1.0 replies are read whole."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with serving(handler) as url:
        assert await get(pool, url) == b"ok"


async def test_error_reply_body_is_cut_and_connection_dropped(pool: ConnectionPool) -> None:
    """A non-200 reply's body is cut at max_error_body_bytes; the rest is not read."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"e" * 100_000)
        await writer.drain()

    async with serving(handler) as url:
        reply = await pool.request(
            url, b"GET", "/x", b"", None, max_body_bytes=CAP_BYTES, max_error_body_bytes=16
        )
        assert (reply.status, reply.body) == (500, b"e" * 16)
        assert pool.open_connections(url) == 0


async def test_oversized_reply_is_malformed_and_not_reused(pool: ConnectionPool) -> None:
    """A 200 body past the cap raises ShardMalformedReply and closes its connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (CAP_BYTES + 1, b"x" * (CAP_BYTES + 1)))
        await writer.drain()

    async with serving(handler) as url:
        with pytest.raises(ShardMalformedReply, match=f"larger than {CAP_BYTES} bytes"):
            await get(pool, url)
        assert pool.open_connections(url) == 0


async def test_unasked_bytes_drop_an_idle_connection(pool: ConnectionPool) -> None:
    """A server that sends bytes on an idle connection loses that connection."""
    sent_extra = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK_REPLY)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        sent_extra.set()
        await read_request(reader)

    async with serving(handler) as url:
        assert await get(pool, url) == b"ok"
        await until(lambda: sent_extra.is_set() and pool.open_connections(url) == 0)


async def test_closing_the_pool_wakes_waiters_with_an_error() -> None:
    """A request waiting for a connection when the pool closes raises instead of hanging."""
    pool = ConnectionPool(max_per_origin=1, max_total=1, keepalive_s=30.0)
    hold = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await hold.wait()

    async with serving(handler) as url:
        busy = asyncio.ensure_future(get(pool, url))
        waiting = asyncio.ensure_future(get(pool, url))
        await until(lambda: pool.open_connections(url) == 1 and pool.waiting() == 1)
        await pool.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
        with pytest.raises(ShardUnavailable):
            await busy
        hold.set()


def test_works_on_uvloop() -> None:
    """The pool runs on uvloop (whose transports are not asyncio.Transport subclasses)."""

    async def main() -> list[bytes]:
        pool = ConnectionPool(max_per_origin=2, max_total=2, keepalive_s=30.0)
        try:
            async with serving(answer_each) as url:
                return [await get(pool, url) for _ in range(3)]
        finally:
            await pool.aclose()

    assert uvloop.run(main()) == [b"ok"] * 3


async def _start(pool: ConnectionPool, url: str) -> asyncio.Future[tuple[object, object]]:
    """``start_request`` for GET /x; a future of what its callback got (reply, error)."""
    ended: asyncio.Future[tuple[object, object]] = asyncio.get_running_loop().create_future()
    started = pool.start_request(
        url,
        b"GET",
        "/x",
        b"",
        max_body_bytes=CAP_BYTES,
        max_error_body_bytes=16,
        on_reply=lambda reply, exc: ended.set_result((reply, exc)),
    )
    if not started:
        ended.cancel()
    return ended


async def test_start_request_sends_only_over_an_idle_connection(pool: ConnectionPool) -> None:
    """With no idle connection, start_request sends nothing and says so; once one is idle,
    it sends over it, calls back once with the reply, and parks the connection again."""
    async with serving(answer_each) as url:
        assert (await _start(pool, url)).cancelled()
        assert pool.open_connections(url) == 0
        assert await get(pool, url) == b"ok"
        for _ in range(3):
            reply, exc = await (await _start(pool, url))
            assert exc is None
            assert isinstance(reply, HttpReply)
            assert (reply.status, reply.body) == (200, b"ok")
        assert pool.open_connections(url) == 1
        assert await get(pool, url) == b"ok"  # the same connection, still in step


async def test_start_request_reports_a_connection_closed_before_replying(
    pool: ConnectionPool,
) -> None:
    """A server that closes instead of answering gives the callback ShardUnavailable (no
    second try), and the connection is not kept."""
    count = itertools.count()

    async def once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader):
            if next(count) == 0:
                writer.write(OK_REPLY)
                await writer.drain()
            else:
                writer.close()
                return

    async with serving(once_then_hang_up) as url:
        assert await get(pool, url) == b"ok"
        reply, exc = await (await _start(pool, url))
        assert reply is None
        assert isinstance(exc, ShardUnavailable)
        assert "closed the connection before replying" in str(exc)
        assert pool.open_connections(url) == 0
