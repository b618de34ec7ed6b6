"""A lean HTTP/1.1 server for the shard protocol, on asyncio protocols and ``httptools``.

It carries a :class:`shards.server.ShardService` and does only what the shard protocol needs:
``POST /search`` and ``GET``/``HEAD /healthz``, keep-alive, ``Content-Length`` or chunked
bodies, ``Expect: 100-continue``, and JSON errors for everything else. Why not aiohttp: a shard
request is one small ``POST``, and a simulated backend costs microseconds, so the HTTP layer
is most of a shard server's CPU; aiohttp's request and response objects, middleware and
writer took about 0.15 ms per request, three quarters of the shard process in the overload
soak. On a 2-core machine that is CPU the aggregator under test does not get.

Bounds and overflow policies:

- **Connections**: at most ``max_connections`` at once; one more is closed as soon as it is
  accepted (drop).
- **Request head**: at most ``max_head_bytes`` (request line and headers) and
  ``max_headers`` headers; over either, 400 ``MalformedHttp`` and the connection is closed.
- **Request body**: at most the service's ``max_body_bytes``, declared or as read; over it,
  413 at once (the rest of the body is not read) and the connection is closed. A whole
  request, chunk framing and trailers included, may take at most twice ``max_head_bytes``
  plus ``max_body_bytes`` (413 too).
- **Pipelined requests**: answered in order, one at a time; at most ``max_pipelined`` wait
  behind the one running, and reading pauses until they drain (block).
- **Unread replies**: while the transport's send buffer is over its high-water mark (a
  client that sends without reading), reading pauses until it drains (block); what is
  buffered for one client is bounded by that mark plus the replies to one read.
- **Idle and slow clients**: a connection with no request running is closed after
  ``keepalive_s`` with nothing complete from it, so a head or body dripped byte by byte
  cannot hold a connection for longer.
- **Searches**: the service's ``max_concurrency`` (429 at once beyond it).

Structured concurrency: a search runs in one task per request, referenced by its
connection; a connection that closes cancels it (the caller gave up, so the shard stops), and
:meth:`ShardHttpServer.close` stops accepting, lets running searches finish for up to
``shutdown_timeout_s``, then closes every connection, which cancels what is left.

Malformed HTTP (anything the llhttp parser refuses) gets 400 with the protocol's JSON error
shape, type ``MalformedHttp``, and the connection closed: its parser state is unknown.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import Final, cast

import httptools

from aggregator.http_protocol import DateLine, parser_reason
from shards.server import DEADLINE_HEADER, ShardResponse, ShardService, error_response

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEAD_BYTES",
    "DEFAULT_MAX_PIPELINED",
    "ShardHttpServer",
]

#: Connections served at once; the aggregator keeps at most 32 per shard, so 1024 leaves room
#: for many aggregators and hand-made clients.
DEFAULT_MAX_CONNECTIONS = 1024
#: Request line plus headers, in bytes (aiohttp's parser allows 8190 per line).
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
#: Headers in one request (aiohttp's parser allows 128).
DEFAULT_MAX_HEADERS = 128
#: Requests that may wait behind the one running on a connection.
DEFAULT_MAX_PIPELINED = 16
#: Seconds a connection may stay open with no request running and none completed.
DEFAULT_KEEPALIVE_S = 75.0
#: Seconds a closing server lets running searches finish (each is bounded by its deadline).
DEFAULT_SHUTDOWN_TIMEOUT_S = 1.0

_DEADLINE_HEADER: Final = DEADLINE_HEADER.lower().encode("ascii")
_ROUTES: Final = {b"/search": (b"POST",), b"/healthz": (b"GET", b"HEAD")}
_ALLOW: Final = {path: ", ".join(m.decode() for m in methods) for path, methods in _ROUTES.items()}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Request:
    """One complete request, as the connection hands it on."""

    __slots__ = ("arrived_at_s", "body", "deadline", "http10", "keep_alive", "method", "path")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        deadline: str | None,
        body: bytes,
        keep_alive: bool,
        http10: bool,
        arrived_at_s: float,
    ) -> None:
        self.method = method
        self.path = path
        self.deadline = deadline
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.arrived_at_s = arrived_at_s


class ShardHttpServer:
    """One listening socket serving a :class:`~shards.server.ShardService` over HTTP/1.1.

    ``port`` 0 picks a free port (read :attr:`port` after :meth:`start`). The bounds are
    described in the module docstring. Use from one event loop.
    """

    def __init__(
        self,
        service: ShardService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_pipelined: int = DEFAULT_MAX_PIPELINED,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        for name, value in (
            ("max_connections", max_connections),
            ("max_head_bytes", max_head_bytes),
            ("max_headers", max_headers),
            ("max_pipelined", max_pipelined),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be > 0, got {keepalive_s!r}")
        if not shutdown_timeout_s >= 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {shutdown_timeout_s!r}")
        self.service = service
        self.host = host
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_pipelined = max_pipelined
        self.keepalive_s = keepalive_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.dates = DateLine()
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._idle = asyncio.Event()  # set while no search runs on any connection
        self._idle.set()
        self._busy = 0

    @property
    def port(self) -> int:
        """The port listened on (the one picked, once started with port 0)."""
        return self._port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def is_serving(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._server is not None

    async def start(self) -> None:
        """Listen; raises ``OSError`` if the port is taken."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), self.host, self._port, reuse_address=True, backlog=1024
        )
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, let running searches finish within ``shutdown_timeout_s``, then
        close every connection (cancelling what still runs). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            if not connection.busy:
                connection.close()
        if self._busy:
            try:
                async with asyncio.timeout(self.shutdown_timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        leftover: list[asyncio.Task[None]] = []
        for connection in list(self._connections):
            task = connection.task
            # Abort, not close: a client that does not read would keep a closing transport
            # (and its connection) alive until its unsent replies were flushed.
            connection.abort()
            if task is not None:
                # connection_lost would cancel it too, an iteration later: cancel it now, so
                # the wait below covers exactly the searches that were still running.
                task.cancel()
                leftover.append(task)
        # Let the transports report connection_lost before the listener's own wait.
        for _ in range(3):
            if not self._connections:
                break
            await asyncio.sleep(0)
        if leftover:
            # Wait for the cancelled searches to unwind (a step or two), so nothing outlives
            # the server: a cancelled task is not a finished one, and its backend may still
            # be running. A backend that ignores cancellation holds close() up, as it would
            # a TaskGroup.
            await asyncio.wait(leftover)
        await server.wait_closed()

    # -- bookkeeping for connections ---------------------------------------------------------

    def _opened(self, connection: _Connection) -> bool:
        if len(self._connections) >= self.max_connections or self._server is None:
            return False
        self._connections.add(connection)
        return True

    def _closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    def _search_started(self) -> None:
        self._busy += 1
        self._idle.clear()

    def _search_ended(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing: the request is refused, and
    ``_Connection.refusal`` says how (httptools reports it as ``HttpParserCallbackError``)."""


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, server: ShardHttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.paused = False  # reading paused: too many pipelined requests in line
        self.write_paused = False  # reading paused: the client is not reading its replies
        self.arrived_at_s = 0.0
        # The request being read.
        self.url = b""
        self.deadline: str | None = None
        self.expect_continue = False
        self.head_bytes = 0
        self.headers = 0
        self.in_head = False
        self.messages = 0  # requests begun on this connection
        self.in_message = False  # between a request's first byte and its last
        self.fed = 0  # bytes of reads that fell wholly inside the current request
        self.declared_bytes: int | None = None
        self.chunks: list[bytes] = []
        self.body_bytes = 0
        # The answer to a request a callback refused.
        self.refusal: ShardResponse | None = None

    @property
    def busy(self) -> bool:
        """A search is running on this connection."""
        return self.task is not None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if not self.server._opened(self):
            self.closed = True
            transport.close()
            return
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm_idle_timer()
        self.server._closed(self)
        self.queue.clear()
        task = self.task
        if task is not None:
            # The caller is gone: stop the search (its slot is freed as the task unwinds).
            task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.arrived_at_s = self.loop.time()
        message = self.messages if self.in_message else -1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # A callback below refused the request (or failed: then it is our bug).
            self._refuse(self.refusal or error_response(500, "InternalError", "internal error"))
        except httptools.HttpParserUpgrade:
            self._refuse(_malformed("protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._refuse(_malformed(parser_reason(str(exc))))
        else:
            if self.in_message and self.messages == message:
                # httptools holds a header or trailer line back until it ends, so the
                # callbacks never see one that does not, and chunk-size lines are not body
                # bytes: count the reads that fell wholly inside this request, or an endless
                # line would grow in the parser without bound. Still in the head, the head's
                # bound applies; after it, a whole request may take its head, twice its body
                # (room for chunk framing) and a head's worth of trailers.
                self.fed += len(data)
                server = self.server
                if self.in_head:
                    if self.fed > server.max_head_bytes:
                        limit = server.max_head_bytes
                        self._refuse(_malformed(f"request head larger than {limit} bytes"))
                elif self.fed > 2 * (server.max_head_bytes + server.service.max_body_bytes):
                    self._refuse(server.service.too_large())

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.deadline = None
        self.expect_continue = False
        self.head_bytes = 0
        self.headers = 0
        self.in_head = True
        self.messages += 1
        self.in_message = True
        self.fed = 0
        self.declared_bytes = None
        self.chunks = []
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        if self.headers > self.server.max_headers:
            self._refuse_in_callback(_malformed(f"more than {self.server.max_headers} headers"))
        self._count_head(len(name) + len(value) + 4)
        lowered = name.lower()
        if lowered == _DEADLINE_HEADER:
            self.deadline = value.decode("latin-1")
        elif lowered == b"content-length":
            # llhttp has checked it is a number and not repeated with another value.
            self.declared_bytes = int(value)
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.parser.should_upgrade():
            # Refuse here: llhttp reports the upgrade (HttpParserUpgrade) only after the
            # message is complete, by when the request would have been answered once already.
            self._refuse_in_callback(_malformed("protocol upgrades are not supported"))
        declared = self.declared_bytes
        if declared is not None and declared > self.server.service.max_body_bytes:
            self._body_over_cap()
        if self.expect_continue and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.server.service.max_body_bytes:
            self._body_over_cap()
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        parser = self.parser
        body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks = []
        request = _Request(
            parser.get_method(),
            self.url.split(b"?", 1)[0],
            self.deadline,
            body,
            parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
            self.arrived_at_s,
        )
        self.queue.append(request)
        self._disarm_idle_timer()
        if self.task is None and len(self.queue) == 1:
            self._serve_queue()
        elif len(self.queue) > self.server.max_pipelined and not self.paused:
            # Block: stop reading until the requests already in line are answered.
            self.paused = True
            self._update_reading()

    # -- answering -----------------------------------------------------------------------------

    def _serve_queue(self) -> None:
        """Answer queued requests in order until one needs a task (or none is left)."""
        while self.queue and self.task is None and not self.closed:
            request = self.queue.popleft()
            methods = _ROUTES.get(request.path)
            if methods is None:
                self._respond(error_response(404, "HTTPNotFound", "Not Found"), request)
            elif request.method not in methods:
                allow = (("Allow", _ALLOW[request.path]),)
                response = error_response(405, "HTTPMethodNotAllowed", "Method Not Allowed", allow)
                self._respond(response, request)
            elif request.path == b"/healthz":
                self._respond(self.server.service.healthz(), request)
            else:
                self.server._search_started()
                self.task = self.loop.create_task(self._search(request))
        if self.paused and len(self.queue) <= self.server.max_pipelined // 2:
            self.paused = False
            self._update_reading()
        if not self.queue and self.task is None and not self.closed:
            self._arm_idle_timer()

    async def _search(self, request: _Request) -> None:
        body = request.body

        async def read_body() -> bytes:
            return body

        try:
            response = await self.server.service.search(
                request.deadline, read_body, request.arrived_at_s
            )
        finally:
            self.task = None
            self.server._search_ended()
        self._respond(response, request)
        self._serve_queue()

    def _respond(self, response: ShardResponse, request: _Request) -> None:
        # While the server shuts down, every reply is the connection's last, so nothing new
        # starts on a connection that was open before (what was pipelined behind the reply
        # is dropped with the connection, as HTTP allows: the client sends it again).
        keep_alive = request.keep_alive and self.server.is_serving
        self._write(
            response,
            keep_alive=keep_alive,
            with_body=request.method != b"HEAD",
            announce_keep_alive=keep_alive and request.http10,
        )
        if not keep_alive:
            self.close()

    def _write(
        self,
        response: ShardResponse,
        *,
        keep_alive: bool,
        with_body: bool,
        announce_keep_alive: bool = False,
    ) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        status = response.status
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status)),
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(response.body),
            self.server.dates.line(),
        ]
        for name, value in response.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif announce_keep_alive:  # HTTP/1.0 closes unless told otherwise
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if with_body:
            parts.append(response.body)
        transport.write(b"".join(parts))

    def _refuse(self, response: ShardResponse) -> None:
        """Answer a request that cannot be parsed or accepted, then close the connection."""
        if self.task is None and not self.queue:
            self._write(response, keep_alive=False, with_body=True)
        # Otherwise requests ahead of this one are still being answered: they end with the
        # connection, and the client sees it close instead of the refusal.
        self.close()

    def pause_writing(self) -> None:
        # The transport's send buffer is over its high-water mark: a client that pipelines
        # requests without reading the replies. Block it: read nothing more until it drains,
        # so the replies buffered for it stay bounded.
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        if self.paused or self.write_paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once, unsent replies and all."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._disarm_idle_timer()

    def close(self) -> None:
        """Close the connection (a running search is cancelled when it is lost)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True
        self._disarm_idle_timer()

    # -- helpers -------------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > self.server.max_head_bytes:
            self._refuse_in_callback(
                _malformed(f"request head larger than {self.server.max_head_bytes} bytes")
            )

    def _body_over_cap(self) -> None:
        # Counted as a failed search, as the aiohttp front end counts it.
        self._refuse_in_callback(self.server.service.too_large())

    def _refuse_in_callback(self, response: ShardResponse) -> None:
        self.refusal = response
        raise _Refused

    def _arm_idle_timer(self) -> None:
        self._disarm_idle_timer()
        self.idle_timer = self.loop.call_later(self.server.keepalive_s, self.close)

    def _disarm_idle_timer(self) -> None:
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None:
            timer.cancel()


_PHRASES: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _malformed(reason: str) -> ShardResponse:
    return error_response(400, "MalformedHttp", reason)


def _phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"Unknown")
