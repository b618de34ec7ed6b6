"""HTTP/1.1 client connections to shard servers: a bounded keep-alive pool per origin.

The shard client sends one small ``POST`` per shard per query, so the per-request cost of the
HTTP layer is most of the coordinator's CPU time: with a general-purpose client it was about
0.25 ms of the loop per shard request, more than the query's own merge and accounting. This
module does only what the shard protocol needs, on asyncio protocols with the ``httptools``
(llhttp) response parser, and nothing it does not need (no cookies, redirects, proxies or
decompression).

What it guarantees:

- **Bounded.** At most ``max_per_origin`` connections to one origin and ``max_total`` in all;
  a request over either bound waits for a connection (overflow policy: block, the caller's
  deadline bounding the wait). Idle connections are closed after ``keepalive_s``.
- **One request per connection at a time**, no pipelining; a connection goes back to the pool
  only after a complete reply the server allows to keep alive. A request that ends any other
  way (error, oversized or truncated body, cancellation) closes its connection, which is how
  the server learns that nobody is waiting for its answer.
- **Errors are the project's.** Everything raised is a :class:`aggregator.errors.ShardError`
  subclass (or :class:`asyncio.CancelledError`), never a library exception.
- **One safe retry.** A reused keep-alive connection the server closed while it sat idle fails
  before any byte of reply arrives; such a request is sent once more on a fresh connection.
  Nothing else is retried (the caller owns the deadline and the retry policy).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import httptools
from yarl import URL

from aggregator.errors import ShardError, ShardMalformedReply, ShardUnavailable

__all__ = ["ConnectionPool", "HttpReply", "ReplyCallback"]

_USER_AGENT: Final = b"fanout-aggregator"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A complete reply: status code, body (cut at the cap when truncating), Content-Encoding,
    and when its last byte was parsed (``time.perf_counter``): a load generator times the
    reply from there, not from when its task next runs."""

    status: int
    body: bytes
    content_encoding: str
    completed_at_s: float = 0.0


class _ClosedBeforeReply(Exception):
    """The connection closed before any byte of the reply: the request may be sent again."""


class _StopParsing(Exception):
    """Raised inside a parser callback to stop reading the reply (the outcome is settled).

    httptools reports it from ``feed_data`` as ``HttpParserCallbackError``.
    """


#: What :meth:`ConnectionPool.start_request` calls when its request ends: the reply, or the
#: error (a :class:`~aggregator.errors.ShardError`) and ``None``.
ReplyCallback = Callable[[HttpReply | None, ShardError | None], None]


class _CallbackWaiter:
    """Stands where an exchange's future stands, and calls back instead of waking a task."""

    __slots__ = ("_done", "callback")

    def __init__(self, callback: Callable[[HttpReply | None, BaseException | None], None]):
        self._done = False
        self.callback = callback

    def done(self) -> bool:
        return self._done

    def set_result(self, reply: HttpReply) -> None:
        self._done = True
        self.callback(reply, None)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self.callback(None, exc)


class _Origin:
    """One scheme://host:port: its idle connections, open count and waiters."""

    __slots__ = ("authority", "heads", "host", "idle", "open", "port", "ssl", "url", "waiters")

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ShardError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.host: str = parsed.host
        self.port: int = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parsed.scheme == "https" else None
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}".encode("ascii")
        self.heads: dict[tuple[bytes, str], bytes] = {}
        # LIFO: the connection used last is reused first, so the rest can idle out.
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def request(self, method: bytes, path: str, headers: bytes, body: bytes | None) -> bytes:
        """The whole request: head, extra ``headers`` (CRLF-ended lines) and ``body``."""
        if body is None:  # no body, no Content-Length (as RFC 9110 asks of a GET)
            return b"".join((self.head(method, path), headers, b"\r\n"))
        return b"".join(
            (self.head(method, path), headers, b"Content-Length: %d\r\n\r\n" % len(body), body)
        )

    def head(self, method: bytes, path: str) -> bytes:
        """The fixed part of a request's head (request line and constant headers), cached."""
        key = (method, path)
        head = self.heads.get(key)
        if head is None:
            target = (URL(self.url).raw_path.rstrip("/") + path).encode("ascii")
            head = b"".join(
                (
                    method, b" ", target, b" HTTP/1.1\r\nHost: ", self.authority,
                    b"\r\nUser-Agent: ", _USER_AGENT,
                    b"\r\nAccept-Encoding: identity\r\n",
                )
            )  # fmt: skip
            self.heads[key] = head
        return head


class _Connection(asyncio.Protocol):
    """One keep-alive connection; reads one reply at a time with the llhttp parser."""

    def __init__(self, pool: ConnectionPool, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[HttpReply] | _CallbackWaiter | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.reusable = False
        # The reply being read.
        self.cap = 0
        self.truncate = False
        self.error_cap = 0
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.got_bytes = False
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the end is known without EOF
        self.encoding = ""

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: the connection's state is unknown, so drop it.
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # A callback raised _StopParsing once the outcome was settled; the parser is now
            # in its error state, so this connection must not carry another request.
            self.reusable = False
            if not waiter.done():
                self._fail(ShardMalformedReply(f"invalid HTTP reply from {self.origin.url}"))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not waiter.done():
                reason = str(exc) or type(exc).__name__
                self._fail(
                    ShardMalformedReply(f"invalid HTTP reply from {self.origin.url}: {reason}")
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed and self.status:
            # A reply framed by the end of the connection (no length, not chunked) is whole.
            self._succeed()
        elif self.got_bytes:
            self._fail(ShardUnavailable(f"reply cut off after {self.size} bytes: connection lost"))
        else:
            waiter.set_exception(_ClosedBeforeReply())

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False
            raise _StopParsing  # a second reply to one request

    def on_status(self, status: bytes) -> None:
        if self.parser.get_status_code() != 200:
            # Only the reason is wanted from an error reply: read its start, drop the rest.
            self.cap = min(self.cap, self.error_cap)
            self.truncate = True

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length":
            self.framed = True
            try:
                declared = int(value)
            except ValueError:
                return  # llhttp itself rejects a bad Content-Length
            if declared > self.cap and not self.truncate:
                self._settle_malformed(
                    f"reply larger than {self.cap} bytes (Content-Length: {declared})"
                )
        elif lowered == b"transfer-encoding":
            self.framed = True
        elif lowered == b"content-encoding":
            self.encoding = value.decode("latin-1").strip().lower()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= self.cap:
            self.chunks.append(body)
            return
        if not self.truncate:
            self._settle_malformed(f"reply larger than {self.cap} bytes")
        kept = self.cap - (self.size - len(body))
        if kept > 0:
            self.chunks.append(body[:kept])
        self._succeed()
        raise _StopParsing

    def on_message_complete(self) -> None:
        self.reusable = bool(self.parser.should_keep_alive())
        self._succeed()

    # -- the exchange ---------------------------------------------------------------------------

    async def exchange(self, request: bytes, cap: int, error_cap: int) -> HttpReply:
        """Send ``request`` and read its reply, body capped at ``cap`` bytes.

        The body of a reply other than 200 is cut at ``error_cap`` bytes instead.
        """
        waiter: asyncio.Future[HttpReply] = asyncio.get_running_loop().create_future()
        self.begin(request, cap, error_cap, waiter)
        try:
            return await waiter
        finally:
            self.waiter = None

    def begin(
        self,
        request: bytes,
        cap: int,
        error_cap: int,
        waiter: asyncio.Future[HttpReply] | _CallbackWaiter,
    ) -> None:
        """Send ``request``; its reply (or failure) settles ``waiter``."""
        assert self.transport is not None
        self.cap = cap
        self.truncate = False
        self.error_cap = error_cap
        self.status = 0
        self.chunks = []
        self.size = 0
        self.got_bytes = False
        self.headers_done = False
        self.framed = False
        self.encoding = ""
        self.reusable = False
        self.waiter = waiter
        self.transport.write(request)

    def _succeed(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            body = b"".join(self.chunks)
            waiter.set_result(HttpReply(self.status, body, self.encoding, time.perf_counter()))

    def _fail(self, exc: ShardError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.reusable = False

    def _settle_malformed(self, reason: str) -> None:
        self._fail(ShardMalformedReply(reason))
        raise _StopParsing

    # -- life cycle -----------------------------------------------------------------------------

    def alive(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def park(self, keepalive_s: float) -> None:
        """Back to the pool's idle list; closed if still idle after ``keepalive_s``."""
        self.idle_timer = asyncio.get_running_loop().call_later(keepalive_s, self._idle_expired)
        self.origin.idle.append(self)

    def unpark(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _idle_expired(self) -> None:
        self.idle_timer = None
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent); the pool stops counting it at once."""
        self.unpark()
        if self.transport is not None:
            self.transport.close()
        self._forget()

    def _forget(self) -> None:
        if not self.closed:
            self.closed = True
            self.unpark()
            self.pool._forget(self)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to many origins, bounded per origin and in total.

    Create and use it inside one running loop; :meth:`aclose` (or leaving ``async with``)
    closes every connection, and a closed pool raises ``RuntimeError`` on use.
    """

    def __init__(self, *, max_per_origin: int, max_total: int, keepalive_s: float) -> None:
        if max_per_origin < 1 or max_total < max_per_origin:
            raise ValueError("need 1 <= max_per_origin <= max_total")
        self.max_per_origin = max_per_origin
        self.max_total = max_total
        self.keepalive_s = keepalive_s
        self._origins: dict[str, _Origin] = {}
        self._connections: set[_Connection] = set()
        self._waiting = 0
        self._closed = False

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def open_connections(self, url: str | None = None) -> int:
        """Connections open (or being opened) to ``url``'s origin, or to all origins."""
        if url is None:
            return len(self._connections)
        origin = self._origins.get(url)
        return 0 if origin is None else origin.open

    def waiting(self) -> int:
        """Requests waiting for a connection now (every origin)."""
        return self._waiting

    async def request(
        self,
        url: str,
        method: bytes,
        path: str,
        headers: bytes,
        body: bytes | None,
        *,
        max_body_bytes: int,
        max_error_body_bytes: int,
    ) -> HttpReply:
        """One request to ``url`` (a normalized base URL) + ``path``; the complete reply.

        ``headers`` are extra header lines, each ending in CRLF. A 200 reply's body over
        ``max_body_bytes`` raises :class:`ShardMalformedReply`; any other reply's body is cut
        at ``max_error_body_bytes`` (only its reason is wanted). Not bounded in time: the
        caller wraps it in its deadline.
        """
        origin = self._origin(url)
        request = origin.request(method, path, headers, body)
        for attempt in (1, 2):
            connection, reused = await self._acquire(origin)
            try:
                reply = await connection.exchange(request, max_body_bytes, max_error_body_bytes)
            except _ClosedBeforeReply:
                connection.close()
                if reused and attempt == 1:
                    continue
                raise ShardUnavailable(
                    f"{url}{path} closed the connection before replying"
                ) from None
            except BaseException:
                connection.close()  # its state is unknown; closing also tells the server
                raise
            if connection.reusable and not self._closed and connection.alive():
                connection.park(self.keepalive_s)
                self._wake(origin)
            else:
                connection.close()
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def start_request(
        self,
        url: str,
        method: bytes,
        path: str,
        headers: bytes,
        *,
        max_body_bytes: int,
        max_error_body_bytes: int,
        on_reply: ReplyCallback,
    ) -> bool:
        """Send a bodyless request now over an idle connection, if one is open, and return
        True: ``on_reply`` is called once, from the connection's own callbacks, with the
        reply or the error. False (nothing sent) when no idle connection is open: use
        :meth:`request`, which opens or waits for one.

        For callers that cannot afford a task per request (a load generator): no task, no
        future and no timeout timer. Unlike :meth:`request` it does not resend when a reused
        connection closes before replying (that is an error here), and it is not bounded in
        time.
        """
        if self._closed:
            raise RuntimeError("ConnectionPool is closed")
        origin = self._origin(url)
        connection = self._take_idle(origin)
        if connection is None:
            return False

        def settled(reply: HttpReply | None, exc: BaseException | None) -> None:
            if exc is None and connection.reusable and not self._closed and connection.alive():
                connection.park(self.keepalive_s)
                self._wake(origin)
            else:
                connection.close()
            if isinstance(exc, _ClosedBeforeReply):
                exc = ShardUnavailable(f"{url}{path} closed the connection before replying")
            assert exc is None or isinstance(exc, ShardError)
            on_reply(reply, exc)

        request = origin.request(method, path, headers, None)
        connection.begin(request, max_body_bytes, max_error_body_bytes, _CallbackWaiter(settled))
        return True

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        """The most recently parked connection to ``origin`` still fit to reuse, if any;
        the unfit ones found on the way are closed."""
        while origin.idle:
            connection = origin.idle.pop()
            connection.unpark()
            # A connection parked from inside the parser's callback (start_request) saw any
            # bytes after its reply (a second reply) only then: they left it not reusable.
            if connection.alive() and connection.reusable:
                return connection
            connection.close()
        return None

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _Origin(url)
        return origin

    async def _acquire(self, origin: _Origin) -> tuple[_Connection, bool]:
        """An idle connection to ``origin`` (reused: True) or a new one; waits at the bounds."""
        while True:
            if self._closed:
                raise RuntimeError("ConnectionPool is closed")
            connection = self._take_idle(origin)
            if connection is not None:
                return connection, True
            if origin.open < self.max_per_origin and (
                len(self._connections) < self.max_total or self._close_one_idle()
            ):
                return await self._connect(origin), False
            waiter = asyncio.get_running_loop().create_future()
            origin.waiters.append(waiter)
            self._waiting += 1
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake(origin)  # pass on the wake-up this waiter will not use
                raise
            finally:
                self._waiting -= 1
                if not waiter.done():
                    waiter.cancel()
                try:
                    origin.waiters.remove(waiter)
                except ValueError:
                    pass

    async def _connect(self, origin: _Origin) -> _Connection:
        connection = _Connection(self, origin)
        # Counted from before the connect starts, so concurrent opens respect the bounds.
        origin.open += 1
        self._connections.add(connection)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: connection, origin.host, origin.port, ssl=origin.ssl
            )
        except OSError as exc:
            connection.close()
            cause = exc.strerror or str(exc) or type(exc).__name__
            raise ShardUnavailable(f"cannot connect to {origin.url}: {cause}") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _close_one_idle(self) -> bool:
        """Close the longest-idle connection of any origin, to make room; False if none."""
        for origin in self._origins.values():
            if origin.idle:
                origin.idle.pop(0).close()
                return True
        return False

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: stop counting it, and let a waiter have its place."""
        if connection in self._connections:
            self._connections.discard(connection)
            connection.origin.open -= 1
        origin = connection.origin
        if connection in origin.idle:
            origin.idle.remove(connection)
        self._wake(origin)

    def _wake(self, origin: _Origin) -> None:
        """Wake one waiter: of ``origin`` first, else of any origin (a total slot may be free).

        A woken waiter re-checks the bounds, so a wake-up that finds no room costs a retry,
        never a request over a bound.
        """
        if not self._waiting:
            return
        if _wake_first(origin.waiters):
            return
        for other in self._origins.values():
            if _wake_first(other.waiters):
                return

    async def aclose(self) -> None:
        """Close every connection and refuse further requests (idempotent)."""
        self._closed = True
        for connection in list(self._connections):
            connection.close()
        for origin in self._origins.values():
            while origin.waiters:
                waiter = origin.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # it wakes, sees the pool closed and raises
        # Let the transports run their connection_lost callbacks before the loop moves on.
        await asyncio.sleep(0)


def _wake_first(waiters: deque[asyncio.Future[None]]) -> bool:
    """Wake the first waiter still waiting; False if there is none."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False
