"""``python -m aggregator serve``: the HTTP search API over a configured or built-in cluster.

::

    python -m aggregator serve                       # built-in local cluster on 127.0.0.1:8080
    python -m aggregator serve --config cluster.toml --workers 2

Without ``--config`` the built-in cluster (:mod:`aggregator.local_cluster`) is started on
loopback ephemeral ports and served through the real HTTP shard client. With ``--config``,
the shards are the file's ``[[shards]]``; each is probed (``/healthz``) for its document count
at start, for up to :data:`STARTUP_PROBE_S` seconds. A shard with several replicas needs one
of them to answer the probe; the others are served anyway (their circuit breakers keep
queries away while they are down). With replicas, or a ``[tail]`` table, the coordinator
plans with :class:`~aggregator.tail.TailTolerantPlanner` (replica selection, hedging,
circuit breakers, retries; its state is per worker process).

``--workers N`` runs N worker processes sharing one port through ``SO_REUSEPORT`` (the kernel
spreads connections across them). The parent reserves the port first (so ``--port 0`` gives
every worker the same port), starts the built-in cluster once (workers connect to it over
loopback, so there is one set of shards however many workers), supervises the workers and
forwards SIGTERM/SIGINT to them. With one worker everything runs in this process.

Shutdown on SIGTERM or SIGINT: stop accepting connections, let queries in flight finish for
up to ``[limits] shutdown_grace_ms`` (then cancel them), close the shard client's sessions,
stop the built-in shards; exit status 0. Binds 127.0.0.1 unless told otherwise; a bearer
token (``--token``, ``$AGGREGATOR_TOKEN`` or ``[server] token``) guards every endpoint but
``/healthz``. Request line, header size, header count and body are bounded by ``[limits]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.admission import Admission
from aggregator.backend import ShardBackend
from aggregator.client import (
    HttpShard,
    ShardClient,
    ShardClientConfig,
    ShardHealth,
    normalize_url,
)
from aggregator.config import (
    DEFAULT_PORT,
    LimitsConfig,
    QueryConfig,
    ShardConfig,
    load_config,
)
from aggregator.coordinator import Coordinator, CoordinatorConfig
from aggregator.errors import ConfigError, ShardError, ShardUnavailable
from aggregator.service import ServiceSettings, create_app, create_runner, create_site
from aggregator.tail import TailConfig, TailTolerantPlanner

__all__ = ["MAX_WORKERS", "STARTUP_PROBE_S", "TOKEN_ENV", "ServePlan", "add_arguments", "run"]

logger = logging.getLogger("aggregator.serve")

#: Most worker processes ``--workers`` accepts.
MAX_WORKERS = 64
#: How long a worker keeps probing configured shards at start before giving up, in seconds.
STARTUP_PROBE_S = 10.0
#: Environment variable read for the bearer token when ``--token`` is not given.
TOKEN_ENV = "AGGREGATOR_TOKEN"
#: How long the parent waits for every worker to listen, in seconds.
_WORKER_START_S = 60.0
_PROBE_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class ShardTarget:
    """A shard to reach: name, base URL and, when known (built-in), its document count."""

    name: str
    url: str
    doc_count: int | None = None


@dataclass(frozen=True, slots=True)
class ServePlan:
    """Everything a serving process needs, resolved from flags, environment and config.

    Picklable, so the parent hands it to worker processes as is. ``shards`` is ``None`` for
    the built-in cluster (started later, by the process that owns it). ``tail`` is the
    tail-tolerance policy (``None``: one request per shard, no policy).
    """

    host: str
    port: int
    workers: int
    loop: str
    token: str | None
    client_id_header: str
    query: QueryConfig
    limits: LimitsConfig
    shards: tuple[ShardConfig, ...] | None
    use_index: bool
    source: str
    log_level: str = "INFO"
    tail: TailConfig | None = None

    def service_settings(self) -> ServiceSettings:
        """The HTTP service's settings."""
        return ServiceSettings(
            default_deadline_ms=self.query.default_deadline_ms,
            max_k=self.query.max_k,
            max_body_bytes=self.limits.max_body_bytes,
            token=self.token,
            client_id_header=self.client_id_header,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options."""
    parser.add_argument(
        "--config", metavar="FILE", help="cluster config (TOML); default: the built-in cluster"
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help=f"port to listen on, 0 for any free port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port via SO_REUSEPORT (default 1)",
    )
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop (default uvloop)"
    )
    parser.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' (default ${TOKEN_ENV} or the config's)",
    )
    parser.add_argument(
        "--simulated",
        action="store_true",
        help="built-in cluster: serve simulated shards, not the stdlib documentation index",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level on stderr (default INFO)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown."""
    plan = _plan(args)
    _configure_logging(plan.log_level)
    if plan.workers == 1:
        return run_loop(lambda: _serve_here(plan), plan.loop)
    return run_loop(lambda: _serve_with_workers(plan), plan.loop)


def _plan(args: argparse.Namespace) -> ServePlan:
    config = load_config(args.config) if args.config else None
    server = config.server if config is not None else None
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    port = args.port if args.port is not None else (server.port if server else DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    token = args.token or os.environ.get(TOKEN_ENV) or (server.token if server else None)
    if token is not None and (not token or not token.isascii() or not token.isprintable()):
        raise ConfigError("the token must be non-empty printable ASCII")
    return ServePlan(
        host=args.host or (server.host if server else "127.0.0.1"),
        port=port,
        workers=args.workers,
        loop=args.loop,
        token=token,
        client_id_header=server.client_id_header if server else "X-Client-Id",
        query=config.query if config else QueryConfig(),
        limits=config.limits if config else LimitsConfig(),
        shards=config.shards if config else None,
        use_index=not args.simulated,
        source=config.source if config else "built-in",
        log_level=args.log_level,
        tail=config.tail_policy() if config else None,
    )


# -- one process -------------------------------------------------------------------------------


async def _serve_here(plan: ServePlan) -> int:
    stop = _stop_on_signals()
    async with AsyncExitStack() as stack:
        targets, description = await _shard_targets(plan, stack)
        await _run_service(
            plan,
            targets,
            stop,
            reuse_port=False,
            on_ready=lambda port: _print_banner(plan, port, description),
        )
    logger.info("stopped")
    return 0


async def _shard_targets(
    plan: ServePlan, stack: AsyncExitStack
) -> tuple[tuple[ShardTarget, ...], str]:
    """The shards to query, starting the built-in cluster (owned by ``stack``) if needed."""
    if plan.shards is not None:
        targets = tuple(ShardTarget(s.name, url) for s in plan.shards for url in s.replicas)
        description = f"{len(plan.shards)} shards from {plan.source}"
        if len(targets) > len(plan.shards):
            description = f"{len(plan.shards)} shards, {len(targets)} replicas from {plan.source}"
        if plan.tail is not None:
            description += f"; {_describe_tail(plan.tail)}"
        return targets, description
    from aggregator.local_cluster import start_builtin_cluster

    builtin = await stack.enter_async_context(start_builtin_cluster(use_index=plan.use_index))
    targets = tuple(ShardTarget(s.name, s.url, s.doc_count) for s in builtin.shards)
    return targets, builtin.description


async def _run_service(
    plan: ServePlan,
    targets: Sequence[ShardTarget],
    stop: asyncio.Event,
    *,
    reuse_port: bool,
    on_ready: Callable[[int], None],
) -> None:
    """Serve the API over ``targets`` until ``stop`` is set, then shut down gracefully."""
    limits = plan.limits
    client_config = ShardClientConfig(
        max_connections_per_shard=limits.max_connections_per_shard,
        max_connections=max(1024, limits.max_connections_per_shard * len(targets)),
        max_body_bytes=limits.max_reply_bytes,
    )
    async with ShardClient(client_config) as client:
        backends = await _connect(targets, client)
        coordinator = Coordinator(
            backends,
            config=CoordinatorConfig(
                default_deadline_ms=plan.query.default_deadline_ms,
                max_inflight_per_shard=limits.max_inflight_per_shard,
            ),
            planner=TailTolerantPlanner(plan.tail) if plan.tail is not None else None,
        )
        admission = Admission(limits.admission())
        app = create_app(coordinator, admission=admission, settings=plan.service_settings())
        runner = create_runner(app, limits)
        await runner.setup()
        try:
            site = create_site(runner, plan.host, plan.port, limits, reuse_port=reuse_port or None)
            await site.start()
            # Start-up is done: keep full collections from walking the long-lived heap.
            freeze_startup_heap()
            on_ready(int(runner.addresses[0][1]))
            await stop.wait()
            logger.info(
                "shutting down: no new connections; in-flight queries get up to %g ms",
                limits.shutdown_grace_ms,
            )
        finally:
            await runner.cleanup()
            lingering = await coordinator.aclose(timeout_s=1.0)
            if lingering:
                logger.warning("%d shard calls still unwinding at exit", lingering)


async def _connect(targets: Sequence[ShardTarget], client: ShardClient) -> list[ShardBackend]:
    """HTTP backends for ``targets``; shards of unknown size are probed, with bounded retries."""
    known = [t for t in targets if t.doc_count is not None]
    if len(known) == len(targets):
        return [HttpShard(t.name, t.url, t.doc_count or 0, client) for t in targets]
    loop = asyncio.get_running_loop()
    give_up_at_s = loop.time() + STARTUP_PROBE_S
    while True:
        try:
            return await _probe(targets, client)
        except ShardUnavailable as exc:
            if loop.time() + _PROBE_RETRY_S > give_up_at_s:
                raise ShardUnavailable(
                    f"{exc} (gave up after {STARTUP_PROBE_S:g} s of retries)"
                ) from exc
            logger.warning("waiting for shards: %s", exc)
            await asyncio.sleep(_PROBE_RETRY_S)


async def _probe(targets: Sequence[ShardTarget], client: ShardClient) -> list[ShardBackend]:
    """Probe every target's ``/healthz`` at once; one backend per target, in order.

    A shard is ready when one of its replicas answered: replicas that did not are served
    anyway, with the document count their siblings reported, and left to the circuit
    breakers. Raises :class:`ShardUnavailable` naming every URL of a shard none of whose
    replicas answered.
    """
    results: list[ShardHealth | BaseException] = await asyncio.gather(
        *(client.fetch_health(t.url) for t in targets), return_exceptions=True
    )
    docs: dict[str, int] = {}
    failures: dict[str, list[str]] = {}
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, ShardError):
            failures.setdefault(target.name, []).append(f"{target.url}: {result}")
        elif isinstance(result, BaseException):
            raise result
        else:
            docs[target.name] = max(docs.get(target.name, 0), result.docs)
    missing = [f for name, fs in failures.items() if name not in docs for f in fs]
    if missing:
        raise ShardUnavailable(f"{len(missing)} shard(s) did not answer: " + "; ".join(missing))
    for name, fs in failures.items():
        logger.warning("shard %s: serving without replicas that did not answer: %s", name, fs)
    return [HttpShard(t.name, normalize_url(t.url), docs[t.name], client) for t in targets]


def _describe_tail(tail: TailConfig) -> str:
    """One line for the banner: how replicas are chosen and when hedges go."""
    if tail.hedge_after_s is not None:
        hedge = f"hedge after {tail.hedge_after_s * 1000:g} ms"
    elif tail.hedge_percentile is not None:
        hedge = f"hedge at p{tail.hedge_percentile:g}"
    else:
        hedge = "no hedging"
    return f"tail tolerance: {tail.selection}, {hedge}, backups <= {tail.backup_share:.0%}"


# -- several worker processes --------------------------------------------------------------------


async def _serve_with_workers(plan: ServePlan) -> int:
    stop = _stop_on_signals()
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        targets, description = await _shard_targets(plan, stack)
        reservation = _reserve_port(plan.host, plan.port)
        stack.callback(reservation.close)
        port = int(reservation.getsockname()[1])
        worker_plan = _with_port(plan, port)
        context = multiprocessing.get_context("spawn")
        workers: list[Any] = []
        ready: list[Connection] = []
        stack.callback(_reap_workers, workers, 1.0)  # only if we leave early
        for index in range(plan.workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(worker_plan, targets, sender, index),
                name=f"aggregator-worker-{index}",
            )
            process.start()
            sender.close()
            workers.append(process)
            ready.append(receiver)
        if not await loop.run_in_executor(None, _wait_ready, workers, ready):
            raise OSError("a worker process failed to start; see its log lines above")
        reservation.close()
        _print_banner(plan, port, description)
        died = loop.run_in_executor(None, _wait_any_exit, workers)
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((died, stopped), return_when=asyncio.FIRST_COMPLETED)
        unexpected = not stop.is_set()
        stopped.cancel()
        grace_s = plan.limits.shutdown_grace_ms / 1000.0
        # Workers drain for up to the grace period, then cancel; a little more, then kill.
        await loop.run_in_executor(None, _reap_workers, workers, 2 * grace_s + 5.0)
        await died
        codes = [process.exitcode for process in workers]
    if unexpected:
        logger.error("a worker exited unexpectedly (exit codes %s); stopped the others", codes)
        return 1
    logger.info("stopped (worker exit codes %s)", codes)
    return 0 if all(code == 0 for code in codes) else 1


def _with_port(plan: ServePlan, port: int) -> ServePlan:
    from dataclasses import replace

    return replace(plan, port=port)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket: fixes the port every worker then binds.

    It never accepts, so it receives no connections; it is closed once the workers listen.
    """
    family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _wait_ready(workers: Sequence[Any], ready: Sequence[Connection]) -> bool:
    """Block until every worker reported it listens (True) or one died first (False)."""
    pending = dict(zip(ready, workers, strict=True))
    sentinels = {process.sentinel: process for process in workers}
    while pending:
        waitables: list[Any] = [*pending, *sentinels]
        done = multiprocessing.connection.wait(waitables, timeout=_WORKER_START_S)
        if not done:
            return False
        for item in done:
            if item in sentinels:
                return False
            conn = item
            assert isinstance(conn, Connection)
            try:
                conn.recv()
            except EOFError:
                return False
            conn.close()
            del pending[conn]
    return True


def _wait_any_exit(workers: Sequence[Any]) -> None:
    multiprocessing.connection.wait([process.sentinel for process in workers])


def _reap_workers(workers: Sequence[Any], timeout_s: float) -> None:
    """SIGTERM every live worker, wait up to ``timeout_s`` in all, then kill the rest:
    nothing outlives the parent."""
    for process in workers:
        if process.is_alive():
            process.terminate()
    loop_deadline = time.monotonic() + timeout_s
    for process in workers:
        process.join(max(0.0, loop_deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


def _worker_main(
    plan: ServePlan, targets: Sequence[ShardTarget], ready: Connection, index: int
) -> None:
    """A worker process: serve on the shared port until SIGTERM/SIGINT; exit 0 when clean."""
    _configure_logging(plan.log_level)

    async def main() -> int:
        stop = _stop_on_signals()

        def on_ready(port: int) -> None:
            ready.send(port)
            ready.close()
            logger.info("worker %d (pid %d) listening on port %d", index, os.getpid(), port)

        await _run_service(plan, targets, stop, reuse_port=True, on_ready=on_ready)
        return 0

    try:
        code = run_loop(main, plan.loop)
    except Exception as exc:
        logger.error("worker %d failed: %s: %s", index, type(exc).__name__, exc)
        code = 1
    sys.exit(code)


# -- shared bits ---------------------------------------------------------------------------------


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (later ones are only logged)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.info("already shutting down (signal %d)", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows' loops
            loop.add_signal_handler(signum, on_signal, signum)
    return stop


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def _print_banner(plan: ServePlan, port: int, description: str) -> None:
    host = f"[{plan.host}]" if _is_ipv6(plan.host) else plan.host
    shown = "127.0.0.1" if plan.host in ("0.0.0.0", "") else host
    base = f"http://{shown}:{port}"
    auth = ' -H "Authorization: Bearer $AGGREGATOR_TOKEN"' if plan.token else ""
    workers = "1 worker" if plan.workers == 1 else f"{plan.workers} workers"
    print(f"aggregator: serving {base} ({workers}; {description})", flush=True)
    print(f"  try: curl{auth} '{base}/search?q=asyncio+timeout&k=5'", flush=True)
    print(f"  also: {base}/healthz  {base}/shards  {base}/metrics", flush=True)
    if not _is_loopback(plan.host) and plan.token is None:
        logger.warning("listening on %s without a token: anyone who can reach it may query", host)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
