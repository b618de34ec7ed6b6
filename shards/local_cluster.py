"""A local cluster: one shard server per backend, on loopback, in the running event loop.

Used by ``python -m shards serve``, by the aggregator's built-in local cluster, by tests and by
benchmarks::

    async with LocalShardCluster(backends) as cluster:
        for endpoint in cluster.endpoints:
            print(endpoint.name, endpoint.url, endpoint.doc_count)

Each server is a :class:`shards.http_server.ShardHttpServer` (the lean HTTP/1.1 front end
of :class:`shards.server.ShardService`), so a caller that disconnects cancels its backend
call. A shard can be stopped and started again on the same port
(:meth:`LocalShardCluster.stop_shard` / :meth:`LocalShardCluster.start_shard`) to rehearse a
shard restart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aggregator.backend import ShardBackend
from shards.http_server import ShardHttpServer
from shards.server import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    ShardServerState,
    ShardService,
)

__all__ = ["LocalShardCluster", "ShardEndpoint", "format_url"]

#: How long a stopping server lets in-flight searches finish, in seconds. Searches are bounded
#: by their deadlines (at most a minute, usually far less), so one second drains almost all.
DEFAULT_SHUTDOWN_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class ShardEndpoint:
    """Where one shard is served: its name, base URL (no trailing slash) and document count."""

    name: str
    url: str
    doc_count: int


def format_url(host: str, port: int) -> str:
    """``http://host:port``, bracketing an IPv6 literal."""
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"http://[{host}]:{port}" if is_v6 else f"http://{host}:{port}"


class _Server:
    __slots__ = ("backend", "http", "port", "service")

    def __init__(self, backend: ShardBackend, service: ShardService, port: int) -> None:
        self.backend = backend
        self.service = service
        self.port = port
        self.http: ShardHttpServer | None = None


class LocalShardCluster:
    """One shard server per backend on ``host``; an async context manager.

    Ports are ``base_port``, ``base_port + 1``, ... in backend order, or ephemeral ports when
    ``base_port`` is 0. ``max_concurrency`` and ``max_body_bytes`` apply to every server (see
    :func:`shards.server.create_shard_app`). Starting raises ``OSError`` if a port is taken,
    after stopping the servers already started. Closing lets in-flight searches finish for up
    to ``shutdown_timeout_s`` seconds, then drops their connections.
    """

    def __init__(
        self,
        backends: Sequence[ShardBackend],
        *,
        host: str = "127.0.0.1",
        base_port: int = 0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        if not backends:
            raise ValueError("a local cluster needs at least one backend")
        if not 0 <= base_port <= 65535 or base_port + len(backends) - 1 > 65535:
            raise ValueError(f"ports {base_port}..{base_port + len(backends) - 1} are not valid")
        if not shutdown_timeout_s >= 0:
            raise ValueError("shutdown_timeout_s must be >= 0")
        self.host = host
        self.shutdown_timeout_s = shutdown_timeout_s
        self._servers = [
            _Server(
                backend,
                ShardService(
                    backend, max_concurrency=max_concurrency, max_body_bytes=max_body_bytes
                ),
                0 if base_port == 0 else base_port + i,
            )
            for i, backend in enumerate(backends)
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> LocalShardCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start every server; on failure stop those already started and re-raise."""
        try:
            for index in range(len(self._servers)):
                await self.start_shard(index)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop every running server (idempotent)."""
        for index in range(len(self._servers)):
            await self.stop_shard(index)

    async def start_shard(self, index: int) -> None:
        """Start shard ``index`` (again), on the port it had before if it ran already."""
        server = self._servers[index]
        if server.http is not None:
            return
        http = ShardHttpServer(
            server.service,
            host=self.host,
            port=server.port,
            shutdown_timeout_s=self.shutdown_timeout_s,
        )
        await http.start()
        server.port = http.port
        server.http = http

    async def stop_shard(self, index: int) -> None:
        """Stop shard ``index``: close its listener, drain, drop its connections."""
        server = self._servers[index]
        http, server.http = server.http, None
        if http is not None:
            await http.close()

    # -- what is served -----------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[ShardEndpoint, ...]:
        """One entry per backend, in order: name, URL and document count."""
        return tuple(
            ShardEndpoint(s.backend.name, format_url(self.host, s.port), s.backend.doc_count)
            for s in self._servers
        )

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URL of every shard server, in backend order."""
        return tuple(e.url for e in self.endpoints)

    def is_running(self, index: int) -> bool:
        """True while shard ``index`` is being served."""
        return self._servers[index].http is not None

    def state(self, index: int) -> ShardServerState:
        """Live counters (in flight, served, shed, ...) of shard ``index``'s server."""
        return self._servers[index].service.state

    def __len__(self) -> int:
        return len(self._servers)
