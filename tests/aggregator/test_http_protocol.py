"""The connection layer under the service: the early 503 for plain GET /search while admission
is overloaded, and when it must not be used. Real loopback sockets, raw bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web

from aggregator import Coordinator, Deadline, Query
from aggregator.admission import Admission, ShedReason
from aggregator.config import LimitsConfig
from aggregator.service import SERVICE_KEY, ServiceSettings, create_app, create_runner
from aggregator.types import ShardReply

#: One query at a time and no wait queue: with one running, every arrival is refused.
LIMITS = replace(LimitsConfig(), max_in_flight=1, max_waiting=0, max_loop_lag_ms=0.0)
SEARCH = b"GET /search?q=x HTTP/1.1\r\nHost: t\r\n\r\n"


class Hanging:
    """A shard that never answers: the query holding the one slot stays in flight."""

    name = "h"
    doc_count = 1

    async def search(self, query: Query, deadline: Deadline) -> Any:
        await asyncio.sleep(3600)


@asynccontextmanager
async def serving(token: str | None = None) -> AsyncIterator[tuple[int, web.Application]]:
    """The service on the serve command's runner, its one slot held by a hanging query."""
    app = create_app(
        Coordinator([Hanging()]),
        admission=Admission(LIMITS.admission()),
        settings=ServiceSettings(default_deadline_ms=60_000.0, token=token),
    )
    runner = create_runner(app, LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = b"" if token is None else b"Authorization: Bearer %s\r\n" % token.encode()
    writer.write(b"GET /search?q=hold HTTP/1.1\r\nHost: t\r\n%s\r\n" % auth)
    queue = app[SERVICE_KEY].admission.queue
    try:
        async with asyncio.timeout(5):
            while queue.in_flight < 1:  # noqa: ASYNC110 (waits on the server's own state)
                await asyncio.sleep(0.001)
        yield port, app
    finally:
        writer.close()
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response from a keep-alive connection: status, headers (lower-case), body."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def test_plain_get_is_refused_early_with_the_handlers_503() -> None:
    """While every arrival is refused, a plain GET /search gets the same 503, Retry-After and
    JSON body as a POST through the handler, without aiohttp's response object (no Server
    header), and is counted as a 503 and a shed like any other."""
    async with serving() as (port, app):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SEARCH)
        early = await read_response(reader)
        body = b'{"q": "x"}'
        writer.write(
            b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        handled = await read_response(reader)
        writer.close()
        assert early[0] == handled[0] == 503
        assert orjson.loads(early[2]) == orjson.loads(handled[2])
        assert orjson.loads(early[2])["error"]["type"] == "Overloaded"
        assert early[1]["retry-after"] == handled[1]["retry-after"]
        assert early[1]["content-type"].startswith("application/json")
        assert "server" not in early[1]
        assert "server" in handled[1]
        service = app[SERVICE_KEY]
        assert service.admission.queue.shed_total[ShedReason.QUEUE_FULL] == 2
        metrics_text = (await _get(port, b"/metrics"))[2].decode()
        assert 'aggregator_http_responses_total{code="503"} 2.0' in metrics_text


async def test_keep_alive_connection_stays_in_step() -> None:
    """Early 503s keep the connection open and in order: after two of them, the same
    connection is still answered by the application (GET /healthz)."""
    async with serving() as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(SEARCH)
            status, headers, _ = await read_response(reader)
            assert status == 503
            assert "server" not in headers
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = await read_response(reader)
        writer.close()
        assert status == 200
        assert orjson.loads(body)["status"] == "ok"


async def test_pipelined_and_bodied_requests_go_through_aiohttp() -> None:
    """Two requests in one read, or a connection that once sent a body, are answered by
    aiohttp in order: never early (the parser may hold part of a request)."""
    async with serving() as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SEARCH + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        first, second = await read_response(reader), await read_response(reader)
        assert (first[0], second[0]) == (503, 200)
        assert "server" in first[1]
        writer.write(b"GET /search?q=x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert (await read_response(reader))[1].get("server") is not None
        writer.write(SEARCH)  # the connection sent a Content-Length once: no early path
        status, headers, _ = await read_response(reader)
        writer.close()
        assert status == 503
        assert "server" in headers


async def test_connection_close_and_http10_go_through_aiohttp() -> None:
    """Requests that change what happens after the reply are never answered early."""
    async with serving() as (port, _):
        for request in (
            b"GET /search?q=x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"GET /search?q=x HTTP/1.0\r\n\r\n",
        ):
            status, headers, _ = await _raw(port, request)
            assert status == 503
            assert "server" in headers


async def test_no_early_refusal_when_a_token_is_required() -> None:
    """With a bearer token configured, an unauthenticated GET /search is told 401, never 503."""
    async with serving(token="s3cret") as (port, _):
        status, _, body = await _raw(port, SEARCH)
        assert status == 401
        assert orjson.loads(body)["error"]["type"] == "Unauthorized"


async def _get(port: int, path: bytes) -> tuple[int, dict[str, str], bytes]:
    return await _raw(port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()


class TickingClock:
    """A clock that moves 5 ms at every reading, and remembers each reading."""

    def __init__(self) -> None:
        self.readings: list[float] = []
        self._now_s = 1000.0

    def now_s(self) -> float:
        self._now_s += 0.005
        self.readings.append(self._now_s)
        return self._now_s


class RecordingShard:
    """Answers at once with no hits, remembering the deadline it was given."""

    name = "r"
    doc_count = 1

    def __init__(self) -> None:
        self.deadlines: list[Deadline] = []

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        self.deadlines.append(deadline)
        return ShardReply("r", 1, ())


async def test_the_budget_starts_when_the_bytes_arrive() -> None:
    """The protocol layer stamps each read on the service's clock and the query's budget
    starts there, not at the later instant its handler first runs."""
    clock = TickingClock()
    shard = RecordingShard()
    app = create_app(
        Coordinator([shard], clock=clock),
        admission=Admission(LIMITS.admission(), clock),
        settings=ServiceSettings(loop_lag_interval_s=0.0, reply_reserve_ms=2.0),
    )
    runner = create_runner(app, LIMITS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        status, _, body = await _raw(
            int(runner.addresses[0][1]),
            b"GET /search?q=x&deadline_ms=100 HTTP/1.1\r\nHost: t\r\n\r\n",
        )
    finally:
        await runner.cleanup()
    assert status == 200, body
    arrived_s, handler_started_s = clock.readings[0], clock.readings[1]
    assert handler_started_s > arrived_s
    (deadline,) = shard.deadlines
    # 100 ms from the arrival, less the 2 ms kept for sending the answer.
    assert deadline.expires_at_s == pytest.approx(arrived_s + 0.098)


async def test_between_requests_covers_the_gap_before_aiohttp_waits_again() -> None:
    """A connection counts as between requests (early 503 allowed) while aiohttp's request
    loop waits, and also after a reply is written but before the loop waits again (or before
    it first runs); never while a handler runs or a request is queued. Pins the aiohttp
    attributes the check reads, so an upgrade that renames them fails here."""
    from aggregator.http_protocol import _ServiceRequestHandler

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    loop = asyncio.get_running_loop()
    connection = _ServiceRequestHandler(
        web.Server(handler), early_shed=None, arrival_clock=None, loop=loop
    )
    assert connection._waiter is None
    assert connection._request_in_progress is False
    assert connection._idle()  # not started yet: nothing sent, nothing owed
    connection._request_in_progress = True
    assert not connection._idle()  # a handler runs: a reply now would overtake its reply
    connection._request_in_progress = False
    connection._waiter = loop.create_future()
    assert connection._idle()  # waiting for the next request
    connection._waiter.set_result(None)
    assert not connection._idle()  # woken for a request it has not taken yet
    connection._waiter = None
    connection._messages.append((object(), object()))  # type: ignore[arg-type]
    assert not connection._idle()  # a request queued behind
    connection._messages.clear()
    connection.force_close()
    assert not connection._idle()
