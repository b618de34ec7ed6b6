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

from aggregator.admission import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_WAITING, DEFAULT_MIN_BUDGET_MS
from aggregator.deadline import MAX_BUDGET_MS
from aggregator.errors import ConfigError
from aggregator.types import MAX_K

__all__ = [
    "DEFAULT_PORT",
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

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """One shard: its name (unique) and the base URL of its shard server."""

    name: str
    url: str


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
    after a shutdown signal.
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_waiting: int = DEFAULT_MAX_WAITING
    min_budget_ms: float = DEFAULT_MIN_BUDGET_MS
    max_inflight_per_shard: int = 64
    max_connections_per_shard: int = 32
    max_reply_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 64 * 1024
    max_line_bytes: int = 8190
    max_field_bytes: int = 8190
    max_headers: int = 100
    shutdown_grace_ms: float = 5000.0


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
    """A whole configuration; ``source`` names where it came from (for messages)."""

    shards: tuple[ShardConfig, ...]
    query: QueryConfig = field(default_factory=QueryConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    source: str = "<config>"


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
        self.no_unknown_keys("", data, {"shards", "query", "limits", "server"})
        shards = self.shards(data.get("shards"))
        query = self.section("query", data.get("query"), QueryConfig, self.query_value)
        limits = self.section("limits", data.get("limits"), LimitsConfig, self.limits_value)
        server = self.section("server", data.get("server"), ServerConfig, self.server_value)
        return ClusterConfig(shards, query, limits, server, self.source)

    def no_unknown_keys(self, where: str, table: Mapping[str, Any], known: set[str]) -> None:
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
        urls: dict[str, int] = {}
        for i, table in enumerate(value):
            where = f"shards[{i}]"
            self.no_unknown_keys(where, table, {"name", "url"})
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
            url = self.url(f"{where}.url", table.get("url"))
            if url in urls:
                raise self.fail(f"{where}.url", f"duplicate url {url!r} (also shards[{urls[url]}])")
            urls[url] = i
            out.append(ShardConfig(name, url))
        return tuple(out)

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
        }
        if key in bounds:
            low, high = bounds[key]
            return self.integer(path, value, low=low, high=high)
        if key == "min_budget_ms":
            return self.number(path, value, low=0.0, high=MAX_BUDGET_MS)
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
