"""The shard protocol's server side: one aiohttp application per shard backend.

``POST /search`` runs one query against the backend within the budget the caller sent in the
``X-Deadline-Ms`` header; ``GET /healthz`` reports the shard's name and document count. The
wire format is documented in ``docs/protocol.md``.

What the server promises:
- The budget starts counting when the handler starts (on the loop clock); the backend gets a
  :class:`aggregator.deadline.Deadline` for it and is cancelled when it expires (reply 504).
- At most ``max_concurrency`` searches run at once; one more is shed at once with 429 and
  ``Retry-After`` (never queued), so a shard under overload answers fast instead of late.
- Every error is a JSON ``{"error": {"type", "reason"}}`` body; a backend that raises gets a
  500 naming the exception type and message, never a traceback.
- A client that disconnects cancels the backend call, provided the runner was built with
  ``handler_cancellation=True`` (:func:`run_shard_app` and :class:`LocalShardCluster` do).
"""

from __future__ import annotations

import asyncio
import logging
import math
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
    "ShardServerState",
    "create_shard_app",
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
class _Limits:
    max_body_bytes: int
    default_budget_ms: float


_BACKEND_KEY = web.AppKey[ShardBackend]("shard_backend")
_STATE_KEY = web.AppKey[ShardServerState]("shard_state")
_LIMITS_KEY = web.AppKey[_Limits]("shard_limits")


def shard_state(app: web.Application) -> ShardServerState:
    """The live counters of an application made by :func:`create_shard_app`."""
    return app[_STATE_KEY]


def create_shard_app(
    backend: ShardBackend,
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    default_budget_ms: float = DEFAULT_BUDGET_MS,
) -> web.Application:
    """An application serving ``backend`` over the shard protocol.

    ``max_concurrency`` bounds concurrent searches (overflow: 429 with ``Retry-After``);
    ``max_body_bytes`` bounds a request body (overflow: 413); ``default_budget_ms`` is the
    budget of a request without an ``X-Deadline-Ms`` header. Raises ``ValueError`` for a
    non-positive limit.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    if not 0 < default_budget_ms <= MAX_BUDGET_MS:
        raise ValueError(f"default_budget_ms must be in (0, {MAX_BUDGET_MS:g}]")
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
    app[_BACKEND_KEY] = backend
    app[_STATE_KEY] = ShardServerState(max_concurrency)
    app[_LIMITS_KEY] = _Limits(max_body_bytes, default_budget_ms)
    app.router.add_post("/search", _search)
    app.router.add_get("/healthz", _healthz)
    return app


# -- replies --------------------------------------------------------------------------------


def reply_to_dict(reply: ShardReply, took_ms: float) -> dict[str, Any]:
    """The ``200`` body of ``POST /search``: ``{"shard", "docs", "hits", "took_ms"}``."""
    hits: list[dict[str, Any]] = []
    for hit in reply.hits:
        item: dict[str, Any] = {"id": hit.doc_id, "score": hit.score}
        if hit.title is not None:
            item["title"] = hit.title
        hits.append(item)
    return {"shard": reply.shard, "docs": reply.docs, "hits": hits, "took_ms": round(took_ms, 3)}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON, headers=headers)


def _error(
    status: int, type_: str, reason: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _json({"error": {"type": type_, "reason": reason}}, status, headers)


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, ...) as JSON bodies, like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {h: exc.headers[h] for h in ("Allow", "Retry-After") if h in exc.headers}
        return _error(exc.status, type(exc).__name__, exc.reason, kept)


# -- request parsing ------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _budget_ms(request: web.Request, default_ms: float) -> float:
    """The caller's remaining budget; 0 means already spent."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return default_ms
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


async def _read_query(request: web.Request, limits: _Limits) -> Query:
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise _BadRequest(413, f"request body larger than {limits.max_body_bytes} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _BadRequest(413, f"request body larger than {limits.max_body_bytes} bytes") from None
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


# -- handlers -------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    backend = request.app[_BACKEND_KEY]
    return _json({"status": "ok", "shard": backend.name, "docs": backend.doc_count})


async def _search(request: web.Request) -> web.Response:
    loop = asyncio.get_running_loop()
    arrived_at_s = loop.time()
    app = request.app
    state = app[_STATE_KEY]
    limits = app[_LIMITS_KEY]
    # Shed before reading the body: an overloaded shard must answer "no" for almost nothing.
    if state.in_flight >= state.max_concurrency:
        state.shed += 1
        return _error(
            429,
            "ShardRejected",
            f"shard is at its concurrency limit ({state.max_concurrency})",
            _retry_after(),
        )
    state.in_flight += 1
    try:
        return await _run_search(request, app[_BACKEND_KEY], state, limits, arrived_at_s)
    finally:
        state.in_flight -= 1


async def _run_search(
    request: web.Request,
    backend: ShardBackend,
    state: ShardServerState,
    limits: _Limits,
    arrived_at_s: float,
) -> web.Response:
    loop = asyncio.get_running_loop()
    try:
        budget_ms = _budget_ms(request, limits.default_budget_ms)
        query = await _read_query(request, limits)
    except _BadRequest as exc:
        state.failed += 1
        return _error(exc.status, "InvalidQuery", exc.reason)
    if budget_ms <= 0 or loop.time() >= arrived_at_s + budget_ms / 1000.0:
        state.timed_out += 1
        return _error(504, "ShardTimeout", "budget already spent when the request arrived")
    deadline = Deadline(arrived_at_s, arrived_at_s + budget_ms / 1000.0)
    try:
        # The backend is told the deadline and should stop by itself; the timeout is the
        # backstop that cancels one that does not.
        async with asyncio.timeout_at(deadline.expires_at_s):
            reply = await backend.search(query, deadline)
        checked = validate_reply(reply, backend.name)
    except TimeoutError:
        state.timed_out += 1
        return _error(504, "ShardTimeout", f"budget of {budget_ms:g} ms spent")
    except ShardTimeout as exc:
        state.timed_out += 1
        return _error(504, "ShardTimeout", str(exc) or f"budget of {budget_ms:g} ms spent")
    except ShardRejected as exc:
        state.shed += 1
        return _error(429, "ShardRejected", str(exc) or "rejected", _retry_after())
    except ShardUnavailable as exc:
        state.failed += 1
        return _error(503, "ShardUnavailable", str(exc) or "unavailable", _retry_after())
    except (ShardMalformedReply, ShardError) as exc:
        state.failed += 1
        return _error(500, type(exc).__name__, str(exc) or type(exc).__name__)
    except Exception as exc:
        # A bug in the backend: log it here, send only its type and message.
        log.exception("shard %s: backend raised", backend.name)
        state.failed += 1
        return _error(500, type(exc).__name__, str(exc) or "backend failed")
    state.served += 1
    took_ms = (loop.time() - arrived_at_s) * 1000.0
    return _json(reply_to_dict(checked, took_ms))
