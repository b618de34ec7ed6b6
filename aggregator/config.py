"""Cluster configuration: which shards, where they are, and the service's limits, from TOML.

A config file looks like ``docs/cluster.example.toml``::

    [server]
    host = "127.0.0.1"
    port = 8080

    [query]
    default_deadline_ms = 1000

    [limits]
    max_in_flight = 32

    [[shards]]
    name = "s0"
    url = "http://127.0.0.1:9001"

    [[shards]]
    name = "s1"
    replicas = ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]

    [tail]
    selection = "p2c"
    hedge_percentile = 95

A shard names one ``url`` or several ``replicas`` (copies holding the same documents). The
``[tail]`` table (with ``[tail.breaker]`` and ``[tail.retry]``) sets the tail-tolerance
policies, :class:`~aggregator.tail.TailConfig`, in milliseconds like the rest of the file.
Every section but ``[[shards]]`` is optional and every key has a default. Unknown sections and
keys are errors (a typo must not silently fall back to a default), and every error is a
:class:`~aggregator.errors.ConfigError` naming the file and the key, e.g.
``cluster.toml: shards[2].url: ...``. Values are plain frozen dataclasses; nothing here opens a
socket. The set of shards comes from configuration only: nothing in a request can make the
aggregator contact another address.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aggregator.admission import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_LOOP_LAG_MS,
    DEFAULT_MAX_WAITING,
    DEFAULT_MIN_BUDGET_MS,
    DEFAULT_STANDING_QUEUE_MS,
    AdmissionLimits,
)
from aggregator.breaker import BreakerConfig
from aggregator.deadline import MAX_BUDGET_MS
from aggregator.errors import ConfigError
from aggregator.replica_selection import SELECTORS
from aggregator.retry import RetryConfig
from aggregator.tail import MAX_ATTEMPTS, TailConfig
from aggregator.types import MAX_K

__all__ = [
    "DEFAULT_PORT",
    "MAX_REPLICAS",
    "ClusterConfig",
    "LimitsConfig",
    "QueryConfig",
    "ServerConfig",
    "ShardConfig",
    "load_config",
    "parse_config",
]

#: Port the service listens on unless told otherwise.
DEFAULT_PORT = 8080
#: Most shards a config may list (each one costs a request per query).
MAX_SHARDS = 1024
#: Most replicas one shard may list.
MAX_REPLICAS = 16
#: Keys of ``[tail]``, ``[tail.breaker]`` and ``[tail.retry]``.
TAIL_KEYS = frozenset(
    {
        "selection",
        "ewma_decay_ms",
        "hedging",
        "hedge_after_ms",
        "hedge_percentile",
        "hedge_window_ms",
        "hedge_refresh_ms",
        "hedge_min_samples",
        "hedge_min_delay_ms",
        "backup_share",
        "backup_burst",
        "max_attempts",
        "reuse_replicas",
        "breaker",
        "retry",
    }
)
BREAKER_KEYS = frozenset(
    {
        "failure_threshold",
        "failure_rate",
        "window_ms",
        "cool_down_ms",
        "max_cool_down_ms",
        "backoff_factor",
    }
)
RETRY_KEYS = frozenset({"enabled", "base_backoff_ms", "max_backoff_ms"})
#: Longest time a ``[tail]`` duration may name, in ms (an hour).
_MAX_TAIL_MS = 3_600_000.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """One shard: its name (unique) and the base URLs of its replicas.

    ``url`` is the first replica's URL; ``replicas`` lists every replica's, ``url`` first
    (left empty when built by hand, it becomes ``(url,)``).
    """

    name: str
    url: str
    replicas: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.replicas:
            object.__setattr__(self, "replicas", (self.url,))
        elif self.replicas[0] != self.url:
            raise ValueError("url must be the first of the replicas")


@dataclass(frozen=True, slots=True)
class QueryConfig:
    """Query defaults: the budget of a query that names none (ms), and the largest ``k``."""

    default_deadline_ms: float = 1000.0
    max_k: int = MAX_K


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Every bound of the service; sizes in bytes, times in milliseconds.

    ``max_in_flight`` / ``max_waiting`` / ``min_budget_ms``: admission control (see
    :mod:`aggregator.admission` for why the defaults). ``max_inflight_per_shard``: concurrent
    calls to one shard across all queries. ``max_connections_per_shard``: the keep-alive pool
    to one shard server. ``max_reply_bytes``: largest shard reply read (larger is an error
    outcome). ``max_body_bytes``: largest ``POST /search`` body.
    ``max_line_bytes`` / ``max_field_bytes`` / ``max_headers``: the HTTP request line, one
    header, and the header count. ``shutdown_grace_ms``: how long in-flight queries may run on
    after a shutdown signal. ``idle_timeout_ms``: how long a client connection may go without
    sending a complete request (idle keep-alive, or a request head that never ends) before it
    is closed, so stalled clients cannot pile up connections. ``max_loop_lag_ms``: event-loop
    lag above which admission lowers its limit on queries in flight (0: a fixed limit).
    ``max_queue_wait_ms``: longest a query waits for an admission slot before it is shed
    (unset: until its deadline can no longer be met). ``standing_queue_ms``: how long the
    admission queue may stay non-empty before arrivals that find no free slot are shed at
    once instead of queued (0: always queue). ``listen_backlog``: connections the kernel
    holds for the service before it accepts them; beyond it, new connections are dropped and
    their clients retry their SYN after a second (the kernel caps it at
    ``net.core.somaxconn``).
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_waiting: int = DEFAULT_MAX_WAITING
    min_budget_ms: float = DEFAULT_MIN_BUDGET_MS
    max_loop_lag_ms: float = DEFAULT_MAX_LOOP_LAG_MS
    max_queue_wait_ms: float | None = None
    standing_queue_ms: float = DEFAULT_STANDING_QUEUE_MS
    max_inflight_per_shard: int = 64
    max_connections_per_shard: int = 32
    max_reply_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 64 * 1024
    max_line_bytes: int = 8190
    max_field_bytes: int = 8190
    max_headers: int = 100
    shutdown_grace_ms: float = 5000.0
    idle_timeout_ms: float = 60_000.0
    #: Why 1024 and not aiohttp's 128: a client pool opening its connections at once (the
    #: overload soak's generator at 2,800 queries/s) overflowed 128 and 63 clients waited the
    #: kernel's one-second SYN retry (``nstat``: TcpExtListenOverflows 63), the 503 p99.9 at
    #: 1,036 ms. The shard server's own listener takes 1024 too.
    listen_backlog: int = 1024

    def admission(self) -> AdmissionLimits:
        """The admission-control part of these limits."""
        return AdmissionLimits(
            max_in_flight=self.max_in_flight,
            max_waiting=self.max_waiting,
            min_budget_ms=self.min_budget_ms,
            max_loop_lag_ms=self.max_loop_lag_ms or None,
            max_queue_wait_ms=self.max_queue_wait_ms,
            standing_queue_ms=self.standing_queue_ms or None,
        )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where the service listens and who may use it.

    ``token``: if set, every endpoint but ``/healthz`` requires ``Authorization: Bearer
    <token>``. ``client_id_header``: the header naming a client for fair admission (empty:
    always use the peer address); set it only behind a proxy that controls it, since a client
    choosing its own id can claim more than one share.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    client_id_header: str = "X-Client-Id"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A whole configuration; ``source`` names where it came from (for messages).

    ``tail`` is the ``[tail]`` table, ``None`` when the file has none.
    """

    shards: tuple[ShardConfig, ...]
    query: QueryConfig = field(default_factory=QueryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    source: str = "<config>"
    tail: TailConfig | None = None

    @property
    def has_replicas(self) -> bool:
        """True when some shard lists more than one replica."""
        return any(len(s.replicas) > 1 for s in self.shards)

    def tail_policy(self) -> TailConfig | None:
        """The tail-tolerance settings to serve with: the ``[tail]`` table, the defaults when
        some shard has replicas but the table is absent, else ``None`` (one request per
        shard, no policy)."""
        if self.tail is not None:
            return self.tail
        return TailConfig() if self.has_replicas else None


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the TOML file at ``path``.

    Raises :class:`ConfigError` (naming the file and the key) for unreadable files, TOML
    syntax errors and invalid values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> ClusterConfig:
    """Validate TOML ``text``; ``source`` prefixes every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return _Reader(source).cluster(data)


# -- validation ------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def cluster(self, data: Mapping[str, Any]) -> ClusterConfig:
        self.no_unknown_keys("", data, {"shards", "query", "limits", "server", "tail"})
        shards = self.shards(data.get("shards"))
        query = self.section("query", data.get("query"), QueryConfig, self.query_value)
        limits = self.section("limits", data.get("limits"), LimitsConfig, self.limits_value)
        server = self.section("server", data.get("server"), ServerConfig, self.server_value)
        tail = None if data.get("tail") is None else self.tail(data["tail"])
        return ClusterConfig(shards, query, limits, server, self.source, tail)

    def no_unknown_keys(
        self, where: str, table: Mapping[str, Any], known: set[str] | frozenset[str]
    ) -> None:
        for key in table:
            if key not in known:
                path = f"{where}.{key}" if where else key
                allowed = ", ".join(sorted(known))
                raise self.fail(path, f"unknown key (allowed: {allowed})")

    def shards(self, value: Any) -> tuple[ShardConfig, ...]:
        if value is None:
            raise self.fail("shards", "at least one [[shards]] entry is required")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail("shards", "must be an array of tables ([[shards]])")
        if not value:
            raise self.fail("shards", "at least one [[shards]] entry is required")
        if len(value) > MAX_SHARDS:
            raise self.fail("shards", f"at most {MAX_SHARDS} shards, got {len(value)}")
        out: list[ShardConfig] = []
        names: dict[str, int] = {}
        urls: dict[str, str] = {}
        for i, table in enumerate(value):
            where = f"shards[{i}]"
            self.no_unknown_keys(where, table, {"name", "url", "replicas"})
            name = self.string(f"{where}.name", table.get("name"), required=True)
            if not name.isprintable() or name != name.strip() or len(name) > 128:
                raise self.fail(
                    f"{where}.name", f"must be 1..128 printable characters, got {name!r}"
                )
            if name in names:
                raise self.fail(
                    f"{where}.name", f"duplicate name {name!r} (also shards[{names[name]}])"
                )
            names[name] = i
            replicas = self.replica_urls(where, table)
            for key, url in replicas:
                if url in urls:
                    raise self.fail(key, f"duplicate url {url!r} (also {urls[url]})")
                urls[url] = key
            out.append(ShardConfig(name, replicas[0][1], tuple(url for _, url in replicas)))
        return tuple(out)

    def replica_urls(self, where: str, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(key, url)`` of every replica of one shard: its ``url`` or its ``replicas``."""
        if "url" in table and "replicas" in table:
            raise self.fail(f"{where}.replicas", "give either url or replicas, not both")
        if "replicas" not in table:
            key = f"{where}.url"
            return [(key, self.url(key, table.get("url")))]
        value = table["replicas"]
        if not isinstance(value, list):
            raise self.fail(f"{where}.replicas", f"must be an array of URLs, got {_type(value)}")
        if not 1 <= len(value) <= MAX_REPLICAS:
            raise self.fail(
                f"{where}.replicas", f"must list 1..{MAX_REPLICAS} URLs, got {len(value)}"
            )
        return [
            (f"{where}.replicas[{j}]", self.url(f"{where}.replicas[{j}]", item))
            for j, item in enumerate(value)
        ]

    def section(
        self,
        name: str,
        table: Any,
        cls: Callable[..., T],
        check: Callable[[str, str, Any], Any],
    ) -> T:
        if table is None:
            return cls()
        if not isinstance(table, dict):
            raise self.fail(name, "must be a table")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        self.no_unknown_keys(name, table, known)
        return cls(**{key: check(f"{name}.{key}", key, value) for key, value in table.items()})

    def tail(self, table: Any) -> TailConfig:
        """``[tail]`` (and its ``breaker`` and ``retry`` sub-tables) as a :class:`TailConfig`."""
        if not isinstance(table, dict):
            raise self.fail("tail", "must be a table")
        self.no_unknown_keys("tail", table, TAIL_KEYS)
        ms = self.duration_ms
        kwargs: dict[str, Any] = {}
        if "selection" in table:
            selection = self.string("tail.selection", table["selection"], required=True)
            if selection not in SELECTORS:
                raise self.fail(
                    "tail.selection", f"must be one of {', '.join(SELECTORS)}, got {selection!r}"
                )
            kwargs["selection"] = selection
        if "ewma_decay_ms" in table:
            kwargs["ewma_decay_s"] = ms("tail.ewma_decay_ms", table["ewma_decay_ms"], zero=False)
        kwargs.update(self.hedge(table))
        if "backup_share" in table:
            kwargs["backup_share"] = self.number(
                "tail.backup_share", table["backup_share"], low=0.0, high=1.0
            )
        if "backup_burst" in table:
            kwargs["backup_burst"] = self.number(
                "tail.backup_burst", table["backup_burst"], low=1.0, high=1_000_000.0
            )
        if "max_attempts" in table:
            kwargs["max_attempts"] = self.integer(
                "tail.max_attempts", table["max_attempts"], low=1, high=MAX_ATTEMPTS
            )
        if "reuse_replicas" in table:
            kwargs["reuse_replicas"] = self.boolean("tail.reuse_replicas", table["reuse_replicas"])
        if "breaker" in table:
            kwargs["breaker"] = self.breaker(table["breaker"])
        if "retry" in table:
            kwargs["retry"] = self.retry(table["retry"])
        return self.build("tail", TailConfig, kwargs)

    def hedge(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """The hedging keys of ``[tail]``: on or off, then a fixed delay or a percentile."""
        out: dict[str, Any] = {}
        ms = self.duration_ms
        hedging = self.boolean("tail.hedging", table.get("hedging", True))
        if "hedge_after_ms" in table and "hedge_percentile" in table:
            raise self.fail(
                "tail.hedge_after_ms", "give either hedge_after_ms or hedge_percentile, not both"
            )
        if not hedging:
            for key in ("hedge_after_ms", "hedge_percentile"):
                if key in table:
                    raise self.fail(f"tail.{key}", "is set but hedging = false")
            out["hedge_after_s"] = None
            out["hedge_percentile"] = None
        elif "hedge_after_ms" in table:
            out["hedge_after_s"] = ms("tail.hedge_after_ms", table["hedge_after_ms"], zero=True)
            out["hedge_percentile"] = None
        elif "hedge_percentile" in table:
            percentile = self.number(
                "tail.hedge_percentile", table["hedge_percentile"], low=0.0, high=100.0
            )
            if not 0 < percentile < 100:
                raise self.fail("tail.hedge_percentile", f"must be in (0, 100), got {percentile:g}")
            out["hedge_percentile"] = percentile
        if "hedge_window_ms" in table:
            out["hedge_window_s"] = ms("tail.hedge_window_ms", table["hedge_window_ms"], zero=False)
        if "hedge_refresh_ms" in table:
            out["hedge_refresh_s"] = ms(
                "tail.hedge_refresh_ms", table["hedge_refresh_ms"], zero=True
            )
        window_s = out.get("hedge_window_s", TailConfig().hedge_window_s)
        if out.get("hedge_refresh_s", TailConfig().hedge_refresh_s) > window_s:
            raise self.fail("tail.hedge_refresh_ms", "must not exceed hedge_window_ms")
        if "hedge_min_samples" in table:
            out["hedge_min_samples"] = self.integer(
                "tail.hedge_min_samples", table["hedge_min_samples"], low=1, high=10_000
            )
        if "hedge_min_delay_ms" in table:
            out["hedge_min_delay_s"] = ms(
                "tail.hedge_min_delay_ms", table["hedge_min_delay_ms"], zero=True
            )
        return out

    def breaker(self, table: Any) -> BreakerConfig:
        if not isinstance(table, dict):
            raise self.fail("tail.breaker", "must be a table")
        self.no_unknown_keys("tail.breaker", table, BREAKER_KEYS)
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            path = f"tail.breaker.{key}"
            if key == "failure_threshold":
                kwargs[key] = self.integer(path, value, low=1, high=1_000_000)
            elif key == "backoff_factor":
                kwargs[key] = self.number(path, value, low=1.0, high=1000.0)
            elif key == "failure_rate":
                kwargs[key] = self.number(path, value, low=0.01, high=1.0)
            else:  # window_ms, cool_down_ms, max_cool_down_ms
                kwargs[key.removesuffix("_ms") + "_s"] = self.duration_ms(path, value, zero=False)
        cool_down_s = kwargs.get("cool_down_s", BreakerConfig().cool_down_s)
        if cool_down_s > kwargs.get("max_cool_down_s", BreakerConfig().max_cool_down_s):
            raise self.fail("tail.breaker.cool_down_ms", "must not exceed max_cool_down_ms")
        return self.build("tail.breaker", BreakerConfig, kwargs)

    def retry(self, table: Any) -> RetryConfig:
        if not isinstance(table, dict):
            raise self.fail("tail.retry", "must be a table")
        self.no_unknown_keys("tail.retry", table, RETRY_KEYS)
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            path = f"tail.retry.{key}"
            if key == "enabled":
                kwargs[key] = self.boolean(path, value)
            else:  # base_backoff_ms, max_backoff_ms
                kwargs[key.removesuffix("_ms") + "_s"] = self.duration_ms(path, value, zero=True)
        base_s = kwargs.get("base_backoff_s", RetryConfig().base_backoff_s)
        if base_s > kwargs.get("max_backoff_s", RetryConfig().max_backoff_s):
            raise self.fail("tail.retry.base_backoff_ms", "must not exceed max_backoff_ms")
        return self.build("tail.retry", RetryConfig, kwargs)

    def build(self, where: str, cls: Callable[..., T], kwargs: dict[str, Any]) -> T:
        """``cls(**kwargs)``, its own validation errors named after ``where``."""
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from exc

    # -- per-key checks ---------------------------------------------------------------------

    def query_value(self, path: str, key: str, value: Any) -> Any:
        if key == "default_deadline_ms":
            return self.number(path, value, low=0.0, high=MAX_BUDGET_MS, low_open=True)
        return self.integer(path, value, low=1, high=MAX_K)  # max_k

    def limits_value(self, path: str, key: str, value: Any) -> Any:
        bounds: dict[str, tuple[int, int]] = {
            "max_in_flight": (1, 100_000),
            "max_waiting": (0, 1_000_000),
            "max_inflight_per_shard": (1, 100_000),
            "max_connections_per_shard": (1, 100_000),
            "max_reply_bytes": (1024, 1024 * 1024 * 1024),
            "max_body_bytes": (64, 64 * 1024 * 1024),
            "max_line_bytes": (256, 1024 * 1024),
            "max_field_bytes": (256, 1024 * 1024),
            "max_headers": (8, 10_000),
            "listen_backlog": (1, 65_535),
        }
        if key in bounds:
            low, high = bounds[key]
            return self.integer(path, value, low=low, high=high)
        if key == "min_budget_ms":
            return self.number(path, value, low=0.0, high=MAX_BUDGET_MS)
        # max_loop_lag_ms 0: a fixed in-flight limit; standing_queue_ms 0: always queue.
        if key in ("max_loop_lag_ms", "max_queue_wait_ms", "standing_queue_ms"):
            return self.number(path, value, low=0.0, high=60_000.0)
        if key == "idle_timeout_ms":  # 0 would mean "never": not allowed
            return self.number(path, value, low=0.0, high=600_000.0, low_open=True)
        return self.number(path, value, low=0.0, high=600_000.0)  # shutdown_grace_ms

    def server_value(self, path: str, key: str, value: Any) -> Any:
        if key == "host":
            return self.string(path, value, required=True)
        if key == "port":
            return self.integer(path, value, low=0, high=65535)
        if key == "token":
            token = self.string(path, value, required=True)
            if not token.isascii() or not token.isprintable() or " " in token:
                raise self.fail(path, "must be printable ASCII without spaces")
            return token
        header = self.string(path, value, required=False)  # client_id_header
        if header and not all(c.isalnum() or c in "-_" for c in header):
            raise self.fail(path, f"not a valid header name: {header!r}")
        return header

    # -- typed readers ----------------------------------------------------------------------

    def string(self, path: str, value: Any, *, required: bool) -> str:
        if value is None:
            raise self.fail(path, "is required")
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_type(value)}")
        if required and not value:
            raise self.fail(path, "must not be empty")
        return value

    def boolean(self, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_type(value)}")
        return value

    def duration_ms(self, path: str, value: Any, *, zero: bool) -> float:
        """A duration in ms (0 allowed only with ``zero``), returned in seconds."""
        high = _MAX_TAIL_MS
        return self.number(path, value, low=0.0, high=high, low_open=not zero) / 1000.0

    def integer(self, path: str, value: Any, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, got {_type(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be in {low}..{high}, got {value}")
        return value

    def number(
        self, path: str, value: Any, *, low: float, high: float, low_open: bool = False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number, got {_type(value)}")
        number = float(value)
        too_low = number <= low if low_open else number < low
        if math.isnan(number) or too_low or number > high:
            bracket = "(" if low_open else "["
            raise self.fail(path, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
        return number

    def url(self, path: str, value: Any) -> str:
        url = self.string(path, value, required=True)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise self.fail(path, f"not a valid URL: {exc}") from exc
        if parts.scheme not in {"http", "https"}:
            raise self.fail(path, f"must be an http:// or https:// URL, got {url!r}")
        if not parts.hostname:
            raise self.fail(path, f"has no host: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise self.fail(path, "must not carry credentials")
        if parts.query or parts.fragment:
            raise self.fail(path, "must not have a query string or fragment")
        if port == 0:
            raise self.fail(path, "port 0 is not a reachable port")
        return url.rstrip("/")


def _type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
