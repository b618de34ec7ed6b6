"""The HTTP search API: a thin aiohttp adapter around a :class:`~aggregator.Coordinator`.

Endpoints:

* ``GET /search?q=&k=&deadline_ms=&min_coverage=`` and ``POST /search`` (a JSON object with
  the same fields) answer a query: 200 with :func:`aggregator.wire.response_to_dict`.
* ``GET /healthz`` (liveness; 503 while draining), ``GET /shards`` (per shard: URL, document
  count, recent latency percentiles, outcome counts; with a tail-tolerant planner also per
  replica: breaker state, EWMA latency, outstanding requests, hedges sent and won, and the
  hedge and retry budget), ``GET /metrics`` (Prometheus text).

Errors are always JSON ``{"error": {"type", "reason"}}``, never a stack trace:

* 400 ``InvalidQuery``: missing or empty ``q``; ``k`` outside 1..max_k; ``deadline_ms``
  outside (0, 60000]; ``min_coverage`` outside (0, 1]; wrong types; malformed JSON; invalid
  UTF-8; repeated parameters (in the query string or as duplicate JSON keys); **unknown
  parameters or fields** (rejected rather than ignored, so a typo such as ``deadline=`` does
  not silently run with the default budget); query parameters on a ``POST``.
* 401 ``Unauthorized`` (bearer token configured and missing or wrong), 404, 405, 408 (a
  ``POST`` body that did not arrive within the default budget), 413 (body over the limit),
  415 (``POST`` body that is not ``application/json``).
* 503 ``Overloaded`` (admission control shed the query) and 503 ``NoShardAnswered`` (every
  shard failed; the body lists each shard's outcome), both with ``Retry-After``.
* 500 ``InternalError`` for anything unexpected: logged with its traceback, answered without.

One end-to-end deadline: the budget starts when the request's headers have been read (before
the body, before admission), so reading, waiting for a slot and fanning out all count against
it. Client disconnects cancel the query's fan-out when the server runs with
``handler_cancellation=True`` (the serve command and aiohttp's test server both do).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator.admission import Admission
from aggregator.config import LimitsConfig
from aggregator.coordinator import Coordinator
from aggregator.deadline import MAX_BUDGET_MS, Deadline, validate_budget_ms
from aggregator.errors import AggregatorError, InvalidQuery, NoShardAnswered, Overloaded
from aggregator.http_protocol import HTTP_ERROR_TYPES, EarlyShed, ServiceAppRunner
from aggregator.metrics import LoopLagMonitor, ServiceMetrics
from aggregator.tail import TailTolerantPlanner
from aggregator.types import MAX_K, Query
from aggregator.wire import dump_json, error_to_dict, response_to_dict

__all__ = [
    "DEFAULT_REPLY_RESERVE_MS",
    "SEARCH_FIELDS",
    "ServiceSettings",
    "create_app",
    "create_runner",
    "create_site",
]

logger = logging.getLogger(__name__)

#: The parameters of a search, in the query string or the JSON body; anything else is a 400.
SEARCH_FIELDS = frozenset({"q", "k", "deadline_ms", "min_coverage"})
#: ``k`` when the request names none.
DEFAULT_K = 10
#: Longest client id accepted from the client-id header.
MAX_CLIENT_ID_CHARS = 128
#: Budget kept for the work after the fan-in (merge, encode, send), in milliseconds.
#:
#: Why 4: ``python -m bench http`` measures the answer at the client against the deadline
#: with one shard of eight at 1 s. With 2 ms kept, the client saw it 0.0-0.4 ms after the
#: deadline at the median but 4.0-6.8 ms after at p99 over four runs (2026-11-23): on a
#: 2-core machine shared with the shards and the load generator, the last few milliseconds
#: (encoding, the write, the loopback hop, the client's loop) vary by about 5 ms. The shards
#: give up 2 ms more of a 100 ms budget so that the answer is inside the deadline at p99,
#: not only at the median. At most 10% of the budget is kept, whatever this says.
DEFAULT_REPLY_RESERVE_MS = 4.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the HTTP service behaves; times in milliseconds or seconds as named.

    ``default_deadline_ms``: the budget of a query that names none. ``max_k``: the largest
    ``k`` (<= 1000). ``max_body_bytes``: the largest ``POST`` body (413 above). ``token``: if
    set, bearer token required on every endpoint but ``/healthz``. ``client_id_header``: the
    header naming a client for fair admission (empty: peer address only).
    ``no_shard_retry_after_s``: ``Retry-After`` when no shard answered.
    ``loop_lag_interval_s``: period of the event-loop lag monitor (0 turns it off); its
    samples also steer admission's in-flight limit, so it is short enough to react within
    a tenth of a second.
    ``reply_reserve_ms``: how much of each query's budget is kept for the work after the
    fan-in (merging, encoding and sending the answer), at most 10% of the budget; the shards
    get the rest, so the answer reaches the client by the deadline, not just leaves the
    coordinator by it.
    """

    default_deadline_ms: float = 1000.0
    max_k: int = MAX_K
    max_body_bytes: int = 64 * 1024
    token: str | None = None
    client_id_header: str = "X-Client-Id"
    no_shard_retry_after_s: float = 1.0
    loop_lag_interval_s: float = 0.025
    reply_reserve_ms: float = DEFAULT_REPLY_RESERVE_MS

    def __post_init__(self) -> None:
        validate_budget_ms(self.default_deadline_ms, name="default_deadline_ms")
        if not 0 <= self.reply_reserve_ms <= 100:
            raise ValueError(f"reply_reserve_ms must be in 0..100, got {self.reply_reserve_ms}")
        if not 1 <= self.max_k <= MAX_K:
            raise ValueError(f"max_k must be in 1..{MAX_K}, got {self.max_k}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (use None for no authentication)")
        if not 0 < self.no_shard_retry_after_s < math.inf:
            raise ValueError("no_shard_retry_after_s must be finite and > 0")
        if not 0 <= self.loop_lag_interval_s < math.inf:
            raise ValueError("loop_lag_interval_s must be finite and >= 0")


#: Where the service state lives on the application.
SERVICE_KEY: web.AppKey[_Service] = web.AppKey("aggregator_service")


def create_app(
    coordinator: Coordinator,
    *,
    admission: Admission | None = None,
    metrics: ServiceMetrics | None = None,
    settings: ServiceSettings | None = None,
    shard_urls: Mapping[str, str] | None = None,
) -> web.Application:
    """The aiohttp application serving ``coordinator``.

    ``admission`` defaults to :class:`Admission` with its default limits; ``metrics`` to a
    fresh :class:`ServiceMetrics` (its own registry) over the coordinator's shards.
    ``shard_urls`` names each shard's address for ``GET /shards``; by default it is read from
    backends that have a ``url`` attribute. The caller owns the coordinator and its backends
    (and closes them); the app owns only its loop-lag monitor task, started on startup and
    cancelled on cleanup. Run it with ``handler_cancellation=True`` so a client that
    disconnects cancels its query.
    """
    settings = settings or ServiceSettings()
    admission = admission or Admission()
    if metrics is None:
        metrics = ServiceMetrics(
            coordinator.cluster.names(),
            admission=admission.queue,
            shard_urls=dict(shard_urls) if shard_urls is not None else _urls_of(coordinator),
            tail=_tail_of(coordinator),
            cluster=coordinator.cluster,
        )
    service = _Service(coordinator, admission, metrics, settings)
    middlewares: list[Middleware] = [_error_middleware]
    if settings.token is not None:  # no token, no extra layer on every request
        middlewares.append(_auth_middleware(settings.token))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SERVICE_KEY] = service
    app.router.add_get("/search", service.search, allow_head=False)
    app.router.add_post("/search", service.search)
    app.router.add_get("/healthz", service.healthz, allow_head=False)
    app.router.add_get("/shards", service.shards, allow_head=False)
    app.router.add_get("/metrics", service.metrics_text, allow_head=False)
    app.on_shutdown.append(service.on_shutdown)
    if settings.loop_lag_interval_s > 0:
        app.cleanup_ctx.append(service.loop_lag_context)
    return app


def create_site(
    runner: web.AppRunner,
    host: str,
    port: int,
    limits: LimitsConfig,
    *,
    reuse_port: bool | None = None,
) -> web.TCPSite:
    """The TCP listener the service is served on, with ``limits.listen_backlog``."""
    return web.TCPSite(runner, host, port, backlog=limits.listen_backlog, reuse_port=reuse_port)


def create_runner(app: web.Application, limits: LimitsConfig) -> web.AppRunner:
    """The runner the service is served with: cancellation on disconnect and every limit.

    A client that hangs up cancels its query's fan-out; the request line, headers and idle
    connections are bounded by ``limits``; shutdown waits at most the grace period; requests
    HTTP's parser refuses get the JSON error shape like every other 4xx; while admission is
    overloaded, plain ``GET /search`` requests are refused before they are parsed
    (:mod:`aggregator.http_protocol`).
    """
    service = app.get(SERVICE_KEY)
    early_shed = None
    if service is not None and service.settings.token is None:
        # With a token, a request must be authenticated before anything else is said to it.
        metrics = service.metrics
        early_shed = EarlyShed(service.admission.queue, lambda: metrics.observe_response(503))
    return ServiceAppRunner(
        app,
        early_shed,
        None if service is None else service.coordinator.clock.now_s,
        handler_cancellation=True,  # a client that hangs up cancels its query's fan-out
        access_log=None,
        shutdown_timeout=limits.shutdown_grace_ms / 1000.0,
        max_line_size=limits.max_line_bytes,
        max_field_size=limits.max_field_bytes,
        max_headers=limits.max_headers,
        # After answering a request whose body never finished (408, 413), read the rest
        # for at most this long before closing (aiohttp's default is 10 s).
        lingering_time=1.0,
        # Also armed when a connection opens: one that never completes a request head is
        # closed too (aiohttp's default is an hour; it has no separate header timeout).
        keepalive_timeout=limits.idle_timeout_ms / 1000.0,
    )


def _tail_of(coordinator: Coordinator) -> TailTolerantPlanner | None:
    """The coordinator's planner when it is tail-tolerant (its state feeds /shards, /metrics)."""
    planner = coordinator.planner
    return planner if isinstance(planner, TailTolerantPlanner) else None


def _urls_of(coordinator: Coordinator) -> dict[str, str]:
    urls: dict[str, str] = {}
    for shard in coordinator.cluster.shards:
        found = [getattr(r, "url", None) for r in shard.replicas]
        named = [str(u) for u in found if u]
        if named:
            urls[shard.name] = ", ".join(named)
    return urls


# -- responses -------------------------------------------------------------------------------


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An ``application/json`` response serialised with orjson."""
    return web.Response(
        body=dump_json(body), status=status, content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    error: AggregatorError | str,
    reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``{"error": {"type", "reason"}}`` with ``status``."""
    return json_response(error_to_dict(error, reason), status, headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


# -- middleware ------------------------------------------------------------------------------


@web.middleware
async def _error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error leaves as JSON; nothing unexpected leaves with a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = HTTP_ERROR_TYPES.get(exc.status, exc.reason.replace(" ", ""))
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return error_response(exc.status, kind, exc.reason, headers)
    except Exception:
        # The traceback goes to the log, never to the client.
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "InternalError", "internal error")


def _auth_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        # Constant-time comparison: the time taken must not reveal how much of it matched.
        if not hmac.compare_digest(given, expected):
            return error_response(
                401,
                "Unauthorized",
                "a valid 'Authorization: Bearer <token>' header is required",
                {"WWW-Authenticate": 'Bearer realm="aggregator"'},
            )
        return await handler(request)

    return auth


# -- the service -----------------------------------------------------------------------------


class _Service:
    """The handlers and the state they share."""

    __slots__ = ("admission", "coordinator", "draining", "lag_monitor", "metrics", "settings")

    def __init__(
        self,
        coordinator: Coordinator,
        admission: Admission,
        metrics: ServiceMetrics,
        settings: ServiceSettings,
    ) -> None:
        self.coordinator = coordinator
        self.admission = admission
        self.metrics = metrics
        self.settings = settings
        self.draining = False
        self.lag_monitor: LoopLagMonitor | None = None

    async def search(self, request: web.Request) -> web.Response:
        # The one budget starts when the request's bytes arrived (stamped by the protocol
        # layer, on the same clock), else now: body, admission and fan-out all count.
        arrived_s = self.coordinator.clock.now_s()
        stamped_s = getattr(request.protocol, "arrived_at_s", None)
        if stamped_s is not None and stamped_s <= arrived_s:
            arrived_s = stamped_s
        metrics = self.metrics
        try:
            fields = await _read_fields(
                request, self.settings.max_body_bytes, self.settings.default_deadline_ms / 1000.0
            )
            query = _build_query(fields, self.settings)
            client = _client_id(request, self.settings.client_id_header)
        except InvalidQuery as exc:
            metrics.observe_response(400)
            return error_response(400, exc)
        except _BodyTooLarge as exc:
            metrics.observe_response(413)
            return error_response(413, "PayloadTooLarge", str(exc))
        except _NotJson as exc:
            metrics.observe_response(415)
            return error_response(415, "UnsupportedMediaType", str(exc))
        except _BodyTooSlow as exc:
            metrics.observe_response(408)
            refusal = error_response(408, "RequestTimeout", str(exc))
            refusal.force_close()  # the rest of that body will not be waited for
            return refusal
        deadline = Deadline.after(arrived_s, query.deadline_ms)
        # The fan-in ends a little before the client's deadline: what is left is for merging,
        # encoding and sending (see DEFAULT_REPLY_RESERVE_MS).
        budget_s = deadline.expires_at_s - arrived_s
        reserve_s = min(self.settings.reply_reserve_ms / 1000.0, 0.1 * budget_s)
        fan_in_deadline = deadline.sooner(deadline.expires_at_s - reserve_s)
        try:
            async with self.admission.slot(client, fan_in_deadline):
                response = await self.coordinator.search(query, fan_in_deadline)
        except Overloaded as exc:
            metrics.observe_response(503)
            return error_response(503, exc, headers=_retry_after(exc.retry_after_s))
        except NoShardAnswered as exc:
            metrics.observe_outcomes(exc.outcomes)
            metrics.observe_response(503)
            headers = _retry_after(self.settings.no_shard_retry_after_s)
            return error_response(503, exc, headers=headers)
        except asyncio.CancelledError:
            metrics.queries_cancelled.inc()
            raise
        metrics.observe_outcomes(response.shards)
        metrics.observe_response(200, self.coordinator.clock.now_s() - arrived_s)
        body = response_to_dict(response)
        client_budget_ms = deadline.budget_ms  # the client's budget, not the fan-in's
        body["deadline_ms"] = None if client_budget_ms is None else round(client_budget_ms, 3)
        return json_response(body)

    async def healthz(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ok", "shards": len(self.coordinator.cluster)})

    async def shards(self, request: web.Request) -> web.Response:
        docs = {s.name: s.doc_count for s in self.coordinator.cluster.shards}
        summaries = self.metrics.shard_summaries()
        for summary in summaries:
            summary["docs"] = docs.get(summary["name"])
        budget = self.metrics.budget_summary()
        if budget is not None:
            return json_response({"shards": summaries, "backup_budget": budget})
        return json_response({"shards": summaries})

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_shutdown(self, app: web.Application) -> None:
        self.draining = True

    async def loop_lag_context(self, app: web.Application) -> AsyncIterator[None]:
        observe = self.metrics.observe_loop_lag
        admission = self.admission

        def record(lag_s: float, busy_share: float) -> None:
            observe(lag_s)
            admission.on_loop_sample(lag_s, busy_share)

        monitor = LoopLagMonitor(record, self.settings.loop_lag_interval_s)
        self.lag_monitor = monitor
        task = asyncio.create_task(monitor.run(), name="aggregator-loop-lag")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait((task,))  # let it unwind; never swallows our own cancellation
            self.lag_monitor = None


# -- request parsing -------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    """The request body is over the limit (413)."""


class _NotJson(Exception):
    """The request body is not declared as JSON (415)."""


class _BodyTooSlow(Exception):
    """The request body did not arrive within the default budget (408)."""


async def _read_fields(
    request: web.Request, max_body_bytes: int, read_timeout_s: float
) -> dict[str, object]:
    """The search fields of a GET (query string) or POST (JSON body), untyped but checked for
    unknown and repeated names. Raises :class:`InvalidQuery`, :class:`_BodyTooLarge`,
    :class:`_NotJson` or :class:`_BodyTooSlow`.

    The body is read within ``read_timeout_s`` (the default budget: the query's own budget is
    in the body, and the clock is already running), so a client that stops sending cannot
    hold a handler.
    """
    raw_query = request.rel_url.raw_query_string
    if request.method == "GET":
        return _fields_from_query_string(raw_query)
    if raw_query:
        raise InvalidQuery("POST /search takes its fields in the JSON body, not the query string")
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise _NotJson(f"the body must be application/json, got {request.content_type!r}")
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise _BodyTooLarge(f"request body is larger than {max_body_bytes} bytes")
    try:
        async with asyncio.timeout(read_timeout_s):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:  # a chunked body that grew past the limit
        raise _BodyTooLarge(f"request body is larger than {max_body_bytes} bytes") from exc
    except TimeoutError as exc:
        raise _BodyTooSlow(
            f"the request body did not arrive within {read_timeout_s * 1000:.0f} ms"
        ) from exc
    return _fields_from_json(body)


def _fields_from_query_string(raw: str) -> dict[str, object]:
    try:
        pairs = parse_qsl(
            raw,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=len(SEARCH_FIELDS),
        )
    except UnicodeDecodeError as exc:
        raise InvalidQuery("the query string is not valid UTF-8 once percent-decoded") from exc
    except ValueError as exc:  # more fields than there are parameters
        raise InvalidQuery(f"too many query parameters (known: {_known()})") from exc
    fields: dict[str, object] = {}
    for name, value in pairs:
        _check_name(name, fields)
        fields[name] = value
    return {name: _typed_from_text(name, str(value)) for name, value in fields.items()}


def _fields_from_json(body: bytes) -> dict[str, object]:
    if not body.strip():
        raise InvalidQuery('the request body is empty; send a JSON object such as {"q": ...}')
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidQuery(f"malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidQuery(f"the JSON body must be an object, got {_json_type(data)}")
    for name in data:
        if name not in SEARCH_FIELDS:
            raise InvalidQuery(f"unknown field {_show(name)} (known: {_known()})")
    _reject_duplicate_keys(body)
    return {
        name: _typed_from_json(name, value) for name, value in data.items() if value is not None
    }


def _reject_duplicate_keys(body: bytes) -> None:
    # orjson keeps the last of repeated keys silently; an ambiguous request is refused
    # instead. Only reached for small, known-field objects that orjson already accepted.
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidQuery(f"field {_show(key)} is given more than once")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=hook)
    except RecursionError as exc:
        raise InvalidQuery("the JSON body is nested too deeply") from exc
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidQuery):
            raise
        raise InvalidQuery(f"malformed JSON body: {exc}") from exc


def _check_name(name: str, seen: Mapping[str, object]) -> None:
    if name not in SEARCH_FIELDS:
        raise InvalidQuery(f"unknown parameter {_show(name)} (known: {_known()})")
    if name in seen:
        raise InvalidQuery(f"parameter {name!r} is given more than once")


def _typed_from_text(name: str, text: str) -> object:
    """Query-string values are text; numbers are parsed strictly and bounded in length."""
    if name == "q":
        return text
    if name == "k":
        if not text.isascii() or not text.isdigit() or len(text) > 7:
            raise InvalidQuery(f"k must be an integer in 1..{MAX_K}, got {_show(text)}")
        return int(text)
    try:
        if len(text) > 32:
            raise ValueError(text)
        return float(text)
    except ValueError as exc:
        raise InvalidQuery(f"{name} must be a number, got {_show(text)}") from exc


def _typed_from_json(name: str, value: object) -> object:
    if name == "q":
        if not isinstance(value, str):
            raise InvalidQuery(f"q must be a string, got {_json_type(value)}")
        return value
    if name == "k":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidQuery(f"k must be an integer, got {_json_type(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"{name} must be a number, got {_json_type(value)}")
    return value


def _build_query(fields: Mapping[str, object], settings: ServiceSettings) -> Query:
    """A validated :class:`Query`; its ``deadline_ms`` is the effective budget."""
    text = fields.get("q")
    if text is None:
        raise InvalidQuery("missing parameter 'q' (the query text)")
    k = fields.get("k", DEFAULT_K)
    if isinstance(k, int) and not isinstance(k, bool) and not 1 <= k <= settings.max_k:
        raise InvalidQuery(f"k must be an integer in 1..{settings.max_k}, got {k}")
    deadline_ms = fields.get("deadline_ms", settings.default_deadline_ms)
    # Over HTTP the budget is 1..60000 ms: a sub-millisecond budget cannot cover a round trip.
    if isinstance(deadline_ms, float | int) and not 1 <= deadline_ms <= MAX_BUDGET_MS:
        raise InvalidQuery(f"deadline_ms must be in 1..{MAX_BUDGET_MS:g} ms, got {deadline_ms!r}")
    return Query(
        text=text,  # type: ignore[arg-type]  # checked by Query
        k=k,  # type: ignore[arg-type]
        deadline_ms=deadline_ms,  # type: ignore[arg-type]
        min_coverage=fields.get("min_coverage"),  # type: ignore[arg-type]
    )


def _client_id(request: web.Request, header: str) -> str:
    """Who is asking, for fair admission: the client-id header, else the peer address."""
    if header:
        value = request.headers.get(header)
        if value is not None:
            if not 0 < len(value) <= MAX_CLIENT_ID_CHARS or not value.isprintable():
                raise InvalidQuery(
                    f"{header} must be 1..{MAX_CLIENT_ID_CHARS} printable characters"
                )
            return f"id:{value}"
    return f"addr:{request.remote or 'unknown'}"


def _known() -> str:
    return ", ".join(sorted(SEARCH_FIELDS))


def _show(value: str, limit: int = 40) -> str:
    """``value`` quoted and cut to ``limit`` characters: echo input, never all of it."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
