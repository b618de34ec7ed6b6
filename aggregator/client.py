"""The shard protocol's client side: shards in other processes as :class:`ShardBackend`\\ s.

One :class:`ShardClient` owns one :class:`~aggregator.connection_pool.ConnectionPool` shared
by every shard: bounded, keep-alive HTTP/1.1 connections per shard server. An
:class:`HttpShard` is one remote shard (one replica) speaking the protocol of
``docs/protocol.md``.

What a caller can rely on:
- No request is unbounded: its timeout is the query deadline's remaining time (capped at
  :data:`aggregator.deadline.MAX_BUDGET_MS`), it covers connecting, waiting for a pooled
  connection, sending and reading the whole body, and the same number of milliseconds goes to
  the shard in the ``X-Deadline-Ms`` header. With no budget left nothing is sent.
- Replies are read as a stream and cut at ``max_body_bytes``; anything malformed, oversized,
  slow-dripping or wrongly typed becomes a :class:`aggregator.errors.ShardError` subclass with a
  reason, never a library exception:

  ============================================  ==========================
  what happened                                 raised
  ============================================  ==========================
  budget spent before sending, client timeout,  :class:`ShardTimeout`
  HTTP 504
  HTTP 429                                      :class:`ShardRejected`
  refused/reset connection, DNS, HTTP 5xx       :class:`ShardUnavailable`
  invalid JSON, wrong shape or types,           :class:`ShardMalformedReply`
  non-finite score, oversized body
  other HTTP 4xx (the shard refused our         :class:`ShardError`
  request)
  ============================================  ==========================

- :class:`asyncio.CancelledError` propagates and closes the request's connection, which the
  shard server sees as a disconnect and uses to cancel its own work.
- Redirects are never followed: only the configured addresses are ever contacted.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeGuard

import orjson
from yarl import URL

from aggregator.clock import Clock, LoopClock
from aggregator.connection_pool import ConnectionPool, HttpReply
from aggregator.deadline import MAX_BUDGET_MS, Deadline
from aggregator.errors import (
    ConfigError,
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.types import Hit, Query, ShardReply

__all__ = [
    "DEADLINE_HEADER",
    "HttpShard",
    "ShardClient",
    "ShardClientConfig",
    "ShardHealth",
    "connect_shards",
    "parse_reply",
]

#: The request header carrying the remaining budget, in decimal milliseconds.
DEADLINE_HEADER = "X-Deadline-Ms"
_DEADLINE_HEADER_BYTES = DEADLINE_HEADER.encode("ascii")

#: Longest error reason kept from a shard's error body, in characters.
_MAX_REASON_CHARS = 200
#: Most bytes read of a non-200 reply (only its reason is wanted).
_MAX_ERROR_BODY_BYTES = 16 * 1024
#: Replies at least this large are parsed on a worker thread, off the event loop.
_PARSE_OFF_LOOP_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ShardClientConfig:
    """Limits of a :class:`ShardClient`.

    ``max_connections_per_shard`` bounds the pool to each shard server; a request over it waits
    for a connection, and that wait counts against its deadline (overflow policy: block until
    the deadline). ``max_connections`` bounds the pool as a whole. ``max_body_bytes`` caps a
    reply body (default 4 MiB: 1000 hits with long titles fit many times over).
    ``probe_timeout_s`` bounds a ``/healthz`` probe; ``keepalive_s`` is how long an idle
    connection is kept for reuse.
    """

    max_connections_per_shard: int = 32
    max_connections: int = 1024
    max_body_bytes: int = 4 * 1024 * 1024
    probe_timeout_s: float = 2.0
    keepalive_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections_per_shard < 1:
            raise ValueError("max_connections_per_shard must be >= 1")
        if self.max_connections < self.max_connections_per_shard:
            raise ValueError("max_connections must be >= max_connections_per_shard")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if not 0 < self.probe_timeout_s <= MAX_BUDGET_MS / 1000.0:
            raise ValueError("probe_timeout_s must be in (0, 60]")
        if not self.keepalive_s > 0:
            raise ValueError("keepalive_s must be > 0")


@dataclass(frozen=True, slots=True)
class ShardHealth:
    """What a shard's ``/healthz`` says: its name and document count, and where it is."""

    url: str
    name: str
    docs: int


@functools.lru_cache(maxsize=4096)
def normalize_url(url: str) -> str:
    """``url`` without a trailing slash; raises :class:`ConfigError` unless http(s)://host."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid shard URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"shard URL must look like http://host:port, got {url!r}")
    if parsed.query_string or parsed.fragment:
        raise ConfigError(f"shard URL must not carry a query or fragment, got {url!r}")
    return str(parsed).rstrip("/")


# -- reply parsing (pure) -----------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float)


def parse_reply(body: bytes, shard: str, k: int) -> ShardReply:
    """Decode and check a ``200`` reply of ``POST /search``; hits are stamped with ``shard``.

    At most ``k`` hits are kept (the rest are not inspected). Raises
    :class:`ShardMalformedReply` naming the first problem: invalid JSON, a missing field, a
    wrong type, a negative count or a non-finite score.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ShardMalformedReply(f"reply is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ShardMalformedReply(f"reply must be a JSON object, got {type(data).__name__}")
    name = data.get("shard")
    if not isinstance(name, str):
        raise ShardMalformedReply(f"reply field 'shard' must be a string, got {name!r:.40}")
    docs = data.get("docs")
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 0:
        raise ShardMalformedReply(
            f"reply field 'docs' must be a non-negative integer, got {docs!r:.40}"
        )
    took_ms = data.get("took_ms", 0.0)
    if not _is_number(took_ms) or not math.isfinite(took_ms) or took_ms < 0:
        raise ShardMalformedReply(
            f"reply field 'took_ms' must be a non-negative number, got {took_ms!r:.40}"
        )
    raw_hits = data.get("hits")
    if not isinstance(raw_hits, list):
        raise ShardMalformedReply(
            f"reply field 'hits' must be a list, got {type(raw_hits).__name__}"
        )
    hits: list[Hit] = []
    append = hits.append
    # The fast path tests exact types: orjson builds only dict/list/str/int/float/bool/None,
    # and never NaN or infinity. Any doubt falls through to _hit_problem for the reason.
    for i, item in enumerate(raw_hits[:k]):
        if type(item) is dict:
            doc_id = item.get("id")
            score = item.get("score")
            title = item.get("title")
            score_type = type(score)
            if (
                type(doc_id) is str
                and doc_id
                and (score_type is float or score_type is int)
                and (title is None or type(title) is str)
                and math.isfinite(score)  # type: ignore[arg-type]
            ):
                append(Hit(doc_id, float(score), shard, title))  # type: ignore[arg-type]
                continue
        raise ShardMalformedReply(_hit_problem(i, item))
    return ShardReply(shard, docs, tuple(hits), float(took_ms))


def _hit_problem(i: int, item: object) -> str:
    """Why hit ``i`` of a reply is malformed."""
    if not isinstance(item, dict):
        return f"hit {i} must be an object, got {type(item).__name__}"
    doc_id = item.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        return f"hit {i}: 'id' must be a non-empty string"
    score = item.get("score")
    if not _is_number(score):
        return f"hit {i} ({doc_id!r:.40}): 'score' must be a number"
    if not math.isfinite(score):
        return f"hit {i} ({doc_id!r:.40}): score {score!r} is not finite"
    return f"hit {i} ({doc_id!r:.40}): 'title' must be a string or null"


def _error_reason(body: bytes) -> str:
    """The reason of a shard's ``{"error": {...}}`` body, or a printable prefix of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:_MAX_REASON_CHARS].decode("utf-8", "replace")
        return text.strip() or "no reason given"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        type_, reason = error.get("type"), error.get("reason")
        parts = [str(p) for p in (type_, reason) if isinstance(p, str) and p]
        if parts:
            return ": ".join(parts)[:_MAX_REASON_CHARS]
    return "no reason given"


def _parse_health(body: bytes, url: str) -> ShardHealth:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ShardMalformedReply(f"{url}/healthz is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("status") != "ok":
        raise ShardUnavailable(f"{url}/healthz does not say status ok")
    name, docs = data.get("shard"), data.get("docs")
    if not isinstance(name, str) or not name:
        raise ShardMalformedReply(f"{url}/healthz: 'shard' must be a non-empty string")
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 0:
        raise ShardMalformedReply(f"{url}/healthz: 'docs' must be a non-negative integer")
    return ShardHealth(url, name, docs)


# -- the client ---------------------------------------------------------------------------------


class ShardClient:
    """One keep-alive connection pool for every shard; an async context manager.

    The pool (:class:`aggregator.connection_pool.ConnectionPool`) is created on first use
    (inside the running loop) and closed by :meth:`aclose` / leaving the ``async with`` block.
    ``clock`` is where deadlines are read (the running loop's clock by default; it must agree
    with the loop, since the request timeout is armed on the loop). :meth:`in_flight` counts
    requests under way per shard URL.
    """

    def __init__(
        self, config: ShardClientConfig | None = None, *, clock: Clock | None = None
    ) -> None:
        self.config = config or ShardClientConfig()
        self.clock: Clock = clock or LoopClock()
        self._pool: ConnectionPool | None = None
        self._closed = False
        self._in_flight: dict[str, int] = {}

    async def __aenter__(self) -> ShardClient:
        self.connection_pool()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def connection_pool(self) -> ConnectionPool:
        """The shared pool, created on first use; raises ``RuntimeError`` once closed."""
        if self._closed:
            raise RuntimeError("ShardClient is closed")
        if self._pool is None:
            self._pool = ConnectionPool(
                max_per_origin=self.config.max_connections_per_shard,
                max_total=self.config.max_connections,
                keepalive_s=self.config.keepalive_s,
            )
        return self._pool

    async def aclose(self) -> None:
        """Close the pool and its connections (idempotent)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    def in_flight(self, url: str | None = None) -> int:
        """Requests under way to the shard at ``url``, or to all shards when ``None``."""
        if url is None:
            return sum(self._in_flight.values())
        return self._in_flight.get(normalize_url(url), 0)

    def in_flight_by_url(self) -> Mapping[str, int]:
        """Requests under way, per shard URL (a snapshot)."""
        return dict(self._in_flight)

    def open_connections(self) -> int:
        """Connections open to every shard now, busy or idle (bounded by the config)."""
        return 0 if self._pool is None else self._pool.open_connections()

    # -- requests -------------------------------------------------------------------------------

    async def search(self, url: str, shard: str, query: Query, deadline: Deadline) -> ShardReply:
        """``POST {url}/search`` for ``query`` within ``deadline``; hits stamped ``shard``.

        Raises a :class:`ShardError` subclass as tabled in the module docstring.
        """
        remaining_s = min(deadline.remaining_s(self.clock.now_s()), MAX_BUDGET_MS / 1000.0)
        if remaining_s <= 0.0:
            raise ShardTimeout("budget spent before the request was sent")
        # Truncate rather than round: the shard must never believe it has more time than we do.
        budget_ms = math.floor(remaining_s * 1e6) / 1e3
        headers = b"%s: %.3f\r\nContent-Type: application/json\r\n" % (
            _DEADLINE_HEADER_BYTES,
            budget_ms,
        )
        payload = orjson.dumps({"q": query.text, "k": query.k})
        body = await self._exchange(
            url, b"POST", "/search", remaining_s, headers, payload, "search"
        )
        if len(body) >= _PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(parse_reply, body, shard, query.k)
        return parse_reply(body, shard, query.k)

    async def fetch_health(self, url: str) -> ShardHealth:
        """``GET {url}/healthz`` within ``probe_timeout_s``: the shard's name and doc count.

        Raises :class:`ShardUnavailable`, :class:`ShardTimeout` or :class:`ShardMalformedReply`.
        """
        url = normalize_url(url)
        body = await self._exchange(
            url, b"GET", "/healthz", self.config.probe_timeout_s, b"", None, "probe"
        )
        return _parse_health(body, url)

    async def _exchange(
        self,
        url: str,
        method: bytes,
        path: str,
        timeout_s: float,
        headers: bytes,
        payload: bytes | None,
        what: str,
    ) -> bytes:
        """One request, bounded by ``timeout_s`` end to end; returns a 200 reply's body."""
        key = normalize_url(url)
        pool = self.connection_pool()
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            async with asyncio.timeout(timeout_s):
                reply = await pool.request(
                    key,
                    method,
                    path,
                    headers,
                    payload,
                    max_body_bytes=self.config.max_body_bytes,
                    max_error_body_bytes=_MAX_ERROR_BODY_BYTES,
                )
        except TimeoutError as exc:
            raise ShardTimeout(
                f"no complete {what} reply within {timeout_s * 1000.0:.0f} ms"
            ) from exc
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
        return _reply_body(reply, key + path)


def _reply_body(reply: HttpReply, target: str) -> bytes:
    """A 200 reply's body, or the :class:`ShardError` its status and error body say."""
    if reply.status != 200:
        reason = _error_reason(reply.body)
        raise _status_error(reply.status, reason, target)
    if reply.content_encoding not in ("", "identity"):
        raise ShardMalformedReply(
            f"reply is {reply.content_encoding}-encoded; only identity is accepted"
        )
    return reply.body


def _status_error(status: int, reason: str, target: str) -> ShardError:
    if status == 504:
        return ShardTimeout(f"shard gave up: HTTP 504: {reason}")
    if status == 429:
        return ShardRejected(f"shard shed the request: HTTP 429: {reason}")
    if status >= 500:
        return ShardUnavailable(f"HTTP {status}: {reason}")
    if 400 <= status < 500:
        return ShardError(f"shard refused the request to {target}: HTTP {status}: {reason}")
    return ShardMalformedReply(f"unexpected HTTP status {status} from {target}")


# -- the backend --------------------------------------------------------------------------------


class HttpShard:
    """A shard served over HTTP; implements :class:`aggregator.backend.ShardBackend`.

    ``name`` is the shard's name in the cluster (hits are stamped with it, whatever the server
    calls itself); ``doc_count`` is its document count as last known (from config or
    :meth:`probe`).
    """

    __slots__ = ("_doc_count", "_name", "client", "url")

    def __init__(self, name: str, url: str, doc_count: int, client: ShardClient) -> None:
        if not name:
            raise ConfigError("a shard needs a non-empty name")
        if isinstance(doc_count, bool) or not isinstance(doc_count, int) or doc_count < 0:
            raise ConfigError(f"shard {name!r}: doc_count must be a non-negative integer")
        self._name = name
        self._doc_count = doc_count
        self.url = normalize_url(url)
        self.client = client

    @property
    def name(self) -> str:
        """The shard's name in the cluster."""
        return self._name

    @property
    def doc_count(self) -> int:
        """Documents in the shard, as last known."""
        return self._doc_count

    @property
    def in_flight(self) -> int:
        """Requests to this shard's URL under way now (across every query)."""
        return self.client.in_flight(self.url)

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """One ``POST /search`` within ``deadline``; see :meth:`ShardClient.search`."""
        return await self.client.search(self.url, self._name, query, deadline)

    async def probe(self) -> int:
        """Read ``/healthz``; update and return the document count.

        Bounded by the client's ``probe_timeout_s``; raises like :meth:`ShardClient.fetch_health`.
        """
        health = await self.client.fetch_health(self.url)
        self._doc_count = health.docs
        return health.docs

    def __repr__(self) -> str:
        return f"HttpShard({self._name!r}, {self.url!r}, docs={self._doc_count})"


async def connect_shards(
    urls: Sequence[str], client: ShardClient, *, names: Sequence[str] | None = None
) -> list[HttpShard]:
    """Probe every URL's ``/healthz`` (concurrently) and build one :class:`HttpShard` each.

    A shard is named by ``names`` when given (same length as ``urls``), else by what its
    server reports; shards reporting the same name become replicas of one shard in a
    :class:`aggregator.cluster.Cluster`. Raises :class:`ShardUnavailable` naming every URL
    that could not be probed, or :class:`ConfigError` for a bad URL or names list.
    """
    if names is not None and len(names) != len(urls):
        raise ConfigError(f"{len(names)} names given for {len(urls)} shard URLs")
    normalized = [normalize_url(u) for u in urls]
    results: list[Any] = await asyncio.gather(
        *(client.fetch_health(u) for u in normalized), return_exceptions=True
    )
    failures: list[str] = []
    shards: list[HttpShard] = []
    for i, result in enumerate(results):
        if isinstance(result, ShardError):
            failures.append(f"{normalized[i]}: {result}")
        elif isinstance(result, BaseException):
            raise result
        else:
            name = result.name if names is None else names[i]
            shards.append(HttpShard(name, normalized[i], result.docs, client))
    if failures:
        raise ShardUnavailable(f"{len(failures)} shard(s) did not answer: " + "; ".join(failures))
    return shards
