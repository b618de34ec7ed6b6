"""The HTTP connection layer under the service's application: what happens before routing.

Three things are done here, per connection, before aiohttp builds a request object:

* **The arrival time.** Each read is stamped on the service's clock
  (``_ServiceRequestHandler.arrived_at_s``), and a query's one budget starts there: "the
  clock starts when the request arrives", not an event-loop iteration later when aiohttp's
  task for it first runs.

* **JSON errors for requests the HTTP parser refuses.** A request line or header over its
  limit, too many headers, a broken method or a negative Content-Length never reaches the
  application or its middleware: aiohttp's protocol handler answers it itself, in plain text.
  ``handle_error`` is where it does so; the override keeps its logging and "already sent"
  check (by calling it) and swaps the body for ``{"error": {"type", "reason"}}``.
  ``tests/aggregator/test_hostile_input.py`` pins the shape, so an aiohttp upgrade that moves
  this hook fails there rather than silently.
* **Early shed.** While admission is overloaded (no free slot and a wait queue that stopped
  draining: :meth:`aggregator.admission.AdmissionQueue.refuse_arrival`), every ``/search``
  arrival is refused whatever it asks, so there is nothing to learn from parsing it. A plain
  ``GET /search`` that arrives whole in one read is then answered 503 + ``Retry-After`` from
  the bytes it came in, without the request object, task, middleware, handler and response
  object aiohttp would build for it: about 200 microseconds of the event loop per 503 at 5x
  overload, when the loop is the one resource short. The reply has the same status, headers
  and JSON body as the handler's own 503, and is counted the same way. An arrival let
  through to a free slot is promised it, so the rest of a burst read in the same iteration
  is refused here too rather than all going the slow way to be shed by the handler.

  Why it is safe: a connection takes this path only while every byte it has sent was whole,
  bodyless ``GET`` heads (so aiohttp's parser holds nothing half-read), only between requests
  (none queued, no handler running, every reply written: aiohttp is waiting for the next
  request, or has yet to start waiting, so no reply is overtaken), and never for a request
  with ``Connection``, ``Upgrade`` or ``Expect`` headers or HTTP/1.0 (which change what
  happens after the reply). Anything else goes through aiohttp unchanged. With a bearer
  token configured the path is off, so an unauthenticated client is told 401 before
  anything else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web

from aggregator.admission import AdmissionQueue
from aggregator.errors import Overloaded
from aggregator.wire import dump_json, error_to_dict

__all__ = ["HTTP_ERROR_TYPES", "DateLine", "EarlyShed", "ServiceAppRunner", "parser_reason"]

#: Error type names of the HTTP statuses the service answers itself.
HTTP_ERROR_TYPES = {
    400: "InvalidQuery",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    500: "InternalError",
}

#: Longest parser message echoed in a reason (the message may quote the offending input).
_MAX_PARSER_REASON_CHARS = 120
#: Request heads that may be answered early: the search endpoint, by GET.
_EARLY_TARGETS = (b"GET /search?", b"GET /search ")
#: Headers that change framing or what follows the reply: their requests go through aiohttp.
_CONNECTION_HEADERS = (
    b"\r\ncontent-length:",
    b"\r\ntransfer-encoding:",
    b"\r\nconnection:",
    b"\r\nupgrade:",
    b"\r\nexpect:",
)


class DateLine:
    """The ``Date`` header line (``Date: ...\r\n``), rebuilt once a second; the same bytes
    object until the second changes, so a caller may cache replies by its identity."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now_s = int(time.time())
        if now_s != self._second:
            self._second = now_s
            self._line = b"Date: " + formatdate(now_s, usegmt=True).encode("ascii") + b"\r\n"
        return self._line


class EarlyShed:
    """The 503 for a ``/search`` arriving now, when admission would refuse any arrival.

    ``on_shed`` is called once per refusal (the service counts the response there). Replies
    are cached by reason and ``Retry-After``, and rebuilt when the ``Date`` second changes.
    """

    __slots__ = ("_cache", "_date", "_dates", "on_shed", "queue")

    def __init__(self, queue: AdmissionQueue, on_shed: Callable[[], None]) -> None:
        self.queue = queue
        self.on_shed = on_shed
        self._cache: dict[tuple[str, int], bytes] = {}
        self._dates = DateLine()
        self._date = b""

    def reply(self) -> bytes | None:
        """The whole HTTP 503 response if an arrival now is refused (and counted), else None."""
        reason = self.queue.refuse_arrival()
        if reason is None:
            return None
        self.on_shed()
        retry_after_s = max(1, math.ceil(self.queue.retry_after_s()))
        date = self._dates.line()
        if date is not self._date:
            self._date = date
            self._cache.clear()
        key = (reason, retry_after_s)
        response = self._cache.get(key)
        if response is None:
            body = dump_json(error_to_dict(Overloaded(reason, retry_after_s=retry_after_s)))
            response = b"".join(
                (
                    b"HTTP/1.1 503 Service Unavailable\r\n",
                    b"Content-Type: application/json\r\n",
                    b"Retry-After: %d\r\n" % retry_after_s,
                    b"Content-Length: %d\r\n" % len(body),
                    self._date, b"\r\n",
                    body,
                )
            )  # fmt: skip
            self._cache[key] = response
        return response


def _is_one_plain_get(data: bytes) -> bool:
    """``data`` is exactly one whole HTTP/1.1 ``GET`` head, with no body and no header that
    changes the connection (see the module docstring)."""
    end = data.find(b"\r\n\r\n")
    if end != len(data) - 4 or not data.startswith(b"GET "):
        return False
    line_end = data.find(b"\r\n")
    if not data[:line_end].endswith(b" HTTP/1.1"):
        return False
    lowered = data.lower()
    return not any(header in lowered for header in _CONNECTION_HEADERS)


class _ServiceRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol handler, with JSON errors and the early shed."""

    __slots__ = ("_arrival_clock", "_early_shed", "_plain_gets", "arrived_at_s")

    def __init__(
        self,
        manager: web.Server,
        *,
        early_shed: EarlyShed | None,
        arrival_clock: Callable[[], float] | None,
        **kwargs: Any,
    ):
        super().__init__(manager, **kwargs)
        self._early_shed = early_shed
        self._arrival_clock = arrival_clock
        #: When the last bytes arrived (on ``arrival_clock``), or None: the service starts a
        #: query's budget here, not when its handler task first runs, which on a busy loop is
        #: an iteration or more later.
        self.arrived_at_s: float | None = None
        # True while every byte received was whole, bodyless GET heads: the parser is then
        # at a message boundary between reads.
        self._plain_gets = True

    def data_received(self, data: bytes) -> None:
        if self._arrival_clock is not None:
            self.arrived_at_s = self._arrival_clock()
        early_shed = self._early_shed
        if early_shed is not None and self._plain_gets:
            if not _is_one_plain_get(data):
                self._plain_gets = False
            elif data.startswith(_EARLY_TARGETS) and self._idle():
                response = early_shed.reply()
                if response is not None and self.transport is not None:
                    self.transport.write(response)
                    self._request_count += 1
                    self._keep_alive_after_early_reply()
                    return
        super().data_received(data)

    def _idle(self) -> bool:
        """Between requests: none queued, none running, every reply written; a reply now is
        in order."""
        waiter = self._waiter
        if waiter is None:
            # The request loop has not reached its wait: either it has not run yet (a new
            # connection) or it is finishing the last request's bookkeeping after its reply
            # was written. Both are between requests unless a handler still runs.
            if getattr(self, "_request_in_progress", True):
                return False
        elif waiter.done():
            return False
        return not self._messages and not self._force_close and not self._close

    def _keep_alive_after_early_reply(self) -> None:
        """What aiohttp does after a reply: the connection stays open, idle from now."""
        self._keepalive = True
        if self._keepalive_timeout > 0:
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error for a request the protocol layer could not hand to the app."""
        super().handle_error(request, status, exc, message)
        reason = "internal error" if status >= 500 else parser_reason(message)
        kind = "MalformedHttp" if status == 400 else HTTP_ERROR_TYPES.get(status, "HttpError")
        response = web.Response(
            body=dump_json(error_to_dict(kind, reason)),
            status=status,
            content_type="application/json",
        )
        response.force_close()  # the parser's state is unknown: never reuse the connection
        return response


def parser_reason(message: str | None) -> str:
    """The first line of the parser's message (later lines draw a caret under the input),
    capped: it may quote the offending bytes."""
    first = (message or "").strip().split("\n", 1)[0].rstrip(": ")
    if not first:
        return "malformed HTTP request"
    if len(first) > _MAX_PARSER_REASON_CHARS:
        return first[: _MAX_PARSER_REASON_CHARS - 3] + "..."
    return first


class _ServiceServer(web.Server):
    """aiohttp's low-level server, making :class:`_ServiceRequestHandler` connections."""

    early_shed: EarlyShed | None = None
    arrival_clock: Callable[[], float] | None = None

    def __call__(self) -> web.RequestHandler:
        try:
            return _ServiceRequestHandler(
                self,
                early_shed=self.early_shed,
                arrival_clock=self.arrival_clock,
                loop=self._loop,
                **self._kwargs,
            )
        except TypeError:
            # aiohttp's own failsafe for handler arguments it does not know: a plain handler.
            return super().__call__()


class ServiceAppRunner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` serving through :class:`_ServiceServer`."""

    def __init__(
        self,
        app: web.Application,
        early_shed: EarlyShed | None,
        arrival_clock: Callable[[], float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(app, **kwargs)
        self.early_shed = early_shed
        self.arrival_clock = arrival_clock

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ServiceServer
        assert isinstance(server, _ServiceServer)
        server.early_shed = self.early_shed
        server.arrival_clock = self.arrival_clock
        return server
