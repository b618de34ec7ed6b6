"""The shard protocol's server side: one transport-free core, two HTTP front ends.

:class:`ShardService` is the protocol itself, with no I/O of its own: given a request's
``X-Deadline-Ms`` header and a way to read its body, it runs one query against the backend and
says what to answer (:class:`ShardResponse`). Two thin adapters put it on a socket:

* :mod:`shards.http_server` (:class:`~shards.http_server.ShardHttpServer`): a lean HTTP/1.1
  server on asyncio protocols and the ``httptools`` parser, which ``python -m shards serve``,
  :class:`shards.local_cluster.LocalShardCluster` and the benchmarks run. A shard request is
  small and the simulated backends cost microseconds, so the HTTP layer is most of a shard
  server's CPU: under aiohttp it was about 0.15 ms per request, three quarters of the shard
  process's time in the overload soak (measured with py-spy).
* :func:`create_shard_app`: an aiohttp application, for embedding a shard in an aiohttp
  service and for aiohttp's test tools.

``POST /search`` runs one query within the budget the caller sent in the ``X-Deadline-Ms``
header; ``GET /healthz`` reports the shard's name and document count. The wire format is
documented in ``docs/protocol.md``.

What the service promises, whichever front end carries it:
- The budget starts counting when the request arrives (on the loop clock); the backend gets a
  :class:`aggregator.deadline.Deadline` for it and is cancelled when it expires (reply 504).
- At most ``max_concurrency`` searches run at once; one more is shed at once with 429 and
  ``Retry-After`` (never queued), so a shard under overload answers fast instead of late.
- Every error is a JSON ``{"error": {"type", "reason"}}`` body; a backend that raises gets a
  500 naming the exception type and message, never a traceback.
- A client that disconnects cancels the backend call (the lean server always; the aiohttp
  application when its runner has ``handler_cancellation=True``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from aggregator.backend import ShardBackend
from aggregator.deadline import MAX_BUDGET_MS, Deadline
from aggregator.dispatch import validate_reply
from aggregator.errors import (
    InvalidQuery,
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.types import MAX_K, Query, ShardReply

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_BUDGET_MS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "RETRY_AFTER_S",
    "BodyTooLarge",
    "ShardResponse",
    "ShardServerState",
    "ShardService",
    "create_shard_app",
    "error_response",
    "reply_to_dict",
    "shard_state",
]

log = logging.getLogger(__name__)

#: The request header carrying the caller's remaining budget, in milliseconds.
DEADLINE_HEADER = "X-Deadline-Ms"
#: Budget given to a request that carries no ``X-Deadline-Ms`` header (e.g. a hand-made
#: ``curl``): long enough for any sane shard, short enough that nothing runs unbounded.
DEFAULT_BUDGET_MS = 1000.0
#: Default cap on concurrent searches per shard server.
DEFAULT_MAX_CONCURRENCY = 64
#: Default cap on a request body: ``q`` is at most 4096 characters, so 64 KiB is generous.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: ``Retry-After`` sent with a 429, in whole seconds (HTTP allows only integers).
RETRY_AFTER_S = 1

_JSON = "application/json"
_RETRY_AFTER = (("Retry-After", str(RETRY_AFTER_S)),)


class ShardServerState:
    """Live counters of one shard server, for tests and operators.

    ``in_flight`` is the number of searches running now; ``served``, ``shed``, ``timed_out``
    and ``failed`` count finished requests by how they ended.
    """

    __slots__ = ("failed", "in_flight", "max_concurrency", "served", "shed", "timed_out")

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.served = 0
        self.shed = 0
        self.timed_out = 0
        self.failed = 0


@dataclass(frozen=True, slots=True)
class ShardResponse:
    """What a shard answers: a status, a JSON body and extra headers (name, value)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class BodyTooLarge(Exception):
    """A request body over the server's cap (declared or as read); the reply is 413."""


def error_response(
    status: int, type_: str, reason: str, headers: tuple[tuple[str, str], ...] = ()
) -> ShardResponse:
    """The protocol's error shape, ``{"error": {"type", "reason"}}``, with ``status``."""
    body = orjson.dumps({"error": {"type": type_, "reason": reason}})
    return ShardResponse(status, body, headers)


def reply_to_dict(reply: ShardReply, took_ms: float) -> dict[str, Any]:
    """The ``200`` body of ``POST /search``: ``{"shard", "docs", "hits", "took_ms"}``."""
    hits: list[dict[str, Any]] = []
    for hit in reply.hits:
        item: dict[str, Any] = {"id": hit.doc_id, "score": hit.score}
        if hit.title is not None:
            item["title"] = hit.title
        hits.append(item)
    return {"shard": reply.shard, "docs": reply.docs, "hits": hits, "took_ms": round(took_ms, 3)}


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ShardService:
    """The shard protocol over one backend, with no transport: what each request gets.

    ``max_concurrency`` bounds concurrent searches (overflow: 429 with ``Retry-After``, before
    the body is read); ``max_body_bytes`` bounds a request body (overflow: 413, enforced by
    the front end's body reader raising :class:`BodyTooLarge`); ``default_budget_ms`` is the
    budget of a request without an ``X-Deadline-Ms`` header. Raises ``ValueError`` for a
    non-positive limit. Must be used from one event loop.
    """

    __slots__ = ("backend", "default_budget_ms", "max_body_bytes", "state")

    def __init__(
        self,
        backend: ShardBackend,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        default_budget_ms: float = DEFAULT_BUDGET_MS,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        if not 0 < default_budget_ms <= MAX_BUDGET_MS:
            raise ValueError(f"default_budget_ms must be in (0, {MAX_BUDGET_MS:g}]")
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        self.default_budget_ms = default_budget_ms
        self.state = ShardServerState(max_concurrency)

    def healthz(self) -> ShardResponse:
        """The ``GET /healthz`` reply: status, shard name and document count."""
        backend = self.backend
        body = {"status": "ok", "shard": backend.name, "docs": backend.doc_count}
        return ShardResponse(200, orjson.dumps(body))

    def too_large(self) -> ShardResponse:
        """The 413 for a body over the cap, counted as failed (for a front end that refuses
        the body before it reaches :meth:`search`)."""
        self.state.failed += 1
        return error_response(413, "InvalidQuery", self._too_large_reason())

    async def search(
        self,
        deadline_header: str | None,
        read_body: Callable[[], Awaitable[bytes]],
        arrived_at_s: float,
    ) -> ShardResponse:
        """The reply to one ``POST /search``.

        ``deadline_header`` is the raw ``X-Deadline-Ms`` value (or ``None``), ``read_body``
        reads the request body (raising :class:`BodyTooLarge` past the cap), and
        ``arrived_at_s`` is when the request arrived on the loop clock: its budget starts
        there. Never raises but for cancellation.
        """
        state = self.state
        # Shed before reading the body: an overloaded shard must answer "no" for almost nothing.
        if state.in_flight >= state.max_concurrency:
            state.shed += 1
            return error_response(
                429,
                "ShardRejected",
                f"shard is at its concurrency limit ({state.max_concurrency})",
                _RETRY_AFTER,
            )
        state.in_flight += 1
        try:
            return await self._search(deadline_header, read_body, arrived_at_s)
        finally:
            state.in_flight -= 1

    async def _search(
        self,
        deadline_header: str | None,
        read_body: Callable[[], Awaitable[bytes]],
        arrived_at_s: float,
    ) -> ShardResponse:
        state = self.state
        backend = self.backend
        loop = asyncio.get_running_loop()
        try:
            budget_ms = self._budget_ms(deadline_header)
            try:
                body = await read_body()
            except BodyTooLarge:
                raise _BadRequest(413, self._too_large_reason()) from None
            query = _parse_query(body)
        except _BadRequest as exc:
            state.failed += 1
            return error_response(exc.status, "InvalidQuery", exc.reason)
        if budget_ms <= 0 or loop.time() >= arrived_at_s + budget_ms / 1000.0:
            state.timed_out += 1
            return error_response(
                504, "ShardTimeout", "budget already spent when the request arrived"
            )
        deadline = Deadline(arrived_at_s, arrived_at_s + budget_ms / 1000.0)
        try:
            # The backend is told the deadline and should stop by itself; the timeout is the
            # backstop that cancels one that does not.
            async with asyncio.timeout_at(deadline.expires_at_s):
                reply = await backend.search(query, deadline)
            checked = validate_reply(reply, backend.name)
        except TimeoutError:
            state.timed_out += 1
            return error_response(504, "ShardTimeout", f"budget of {budget_ms:g} ms spent")
        except ShardTimeout as exc:
            state.timed_out += 1
            return error_response(
                504, "ShardTimeout", str(exc) or f"budget of {budget_ms:g} ms spent"
            )
        except ShardRejected as exc:
            state.shed += 1
            return error_response(429, "ShardRejected", str(exc) or "rejected", _RETRY_AFTER)
        except ShardUnavailable as exc:
            state.failed += 1
            return error_response(503, "ShardUnavailable", str(exc) or "unavailable", _RETRY_AFTER)
        except (ShardMalformedReply, ShardError) as exc:
            state.failed += 1
            return error_response(500, type(exc).__name__, str(exc) or type(exc).__name__)
        except Exception as exc:
            # A bug in the backend: log it here, send only its type and message.
            log.exception("shard %s: backend raised", backend.name)
            state.failed += 1
            return error_response(500, type(exc).__name__, str(exc) or "backend failed")
        state.served += 1
        took_ms = (loop.time() - arrived_at_s) * 1000.0
        return ShardResponse(200, orjson.dumps(reply_to_dict(checked, took_ms)))

    def _too_large_reason(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes"

    def _budget_ms(self, raw: str | None) -> float:
        """The caller's remaining budget; 0 means already spent."""
        if raw is None:
            return self.default_budget_ms
        try:
            value = float(raw.strip())
        except ValueError:
            raise _BadRequest(
                400, f"{DEADLINE_HEADER} must be a decimal number of milliseconds, got {raw[:40]!r}"
            ) from None
        if math.isnan(value) or not 0 <= value <= MAX_BUDGET_MS:
            raise _BadRequest(
                400, f"{DEADLINE_HEADER} must be in [0, {MAX_BUDGET_MS:g}], got {raw[:40]!r}"
            )
        return value


def _parse_query(body: bytes) -> Query:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest(400, f"request body must be a JSON object, got {type(data).__name__}")
    text = data.get("q")
    if not isinstance(text, str):
        raise _BadRequest(400, "field 'q' must be a string")
    k = data.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise _BadRequest(400, f"field 'k' must be an integer in 1..{MAX_K}, got {k!r}")
    try:
        return Query(text, k)
    except InvalidQuery as exc:
        raise _BadRequest(400, str(exc)) from None


# -- the aiohttp front end ------------------------------------------------------------------

_SERVICE_KEY = web.AppKey[ShardService]("shard_service")


def shard_state(app: web.Application) -> ShardServerState:
    """The live counters of an application made by :func:`create_shard_app`."""
    return app[_SERVICE_KEY].state


def create_shard_app(
    backend: ShardBackend,
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    default_budget_ms: float = DEFAULT_BUDGET_MS,
) -> web.Application:
    """An aiohttp application serving ``backend`` over the shard protocol.

    The limits are :class:`ShardService`'s. Raises ``ValueError`` for a non-positive limit.
    """
    service = ShardService(
        backend,
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        default_budget_ms=default_budget_ms,
    )
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
    app[_SERVICE_KEY] = service
    app.router.add_post("/search", _search)
    app.router.add_get("/healthz", _healthz)
    return app


def _web_response(response: ShardResponse) -> web.Response:
    return web.Response(
        body=response.body,
        status=response.status,
        content_type=_JSON,
        headers=dict(response.headers) if response.headers else None,
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, ...) as JSON bodies, like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = tuple((h, exc.headers[h]) for h in ("Allow", "Retry-After") if h in exc.headers)
        return _web_response(error_response(exc.status, type(exc).__name__, exc.reason, kept))


async def _healthz(request: web.Request) -> web.Response:
    return _web_response(request.app[_SERVICE_KEY].healthz())


async def _search(request: web.Request) -> web.Response:
    arrived_at_s = asyncio.get_running_loop().time()
    service = request.app[_SERVICE_KEY]

    async def read_body() -> bytes:
        declared = request.content_length
        if declared is not None and declared > service.max_body_bytes:
            raise BodyTooLarge
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge from None

    response = await service.search(request.headers.get(DEADLINE_HEADER), read_body, arrived_at_s)
    return _web_response(response)
