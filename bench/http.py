"""``python -m bench http``: the HTTP aggregator against a naive ``asyncio.gather`` peer.

The system under test, over loopback, in two server processes:

* a *shard process*: 8 simulated shards (:func:`shards.sim.simulated_cluster`) that answer at
  once, each behind its own shard server (:class:`shards.local_cluster.LocalShardCluster`);
* a *front process* with two HTTP services in front of those same 8 shards:
  the aggregator (:func:`aggregator.service.create_app` over :class:`aggregator.client.HttpShard`,
  with admission control, metrics and one end-to-end deadline), and the naive peer: an aiohttp
  handler that posts to the 8 shards with ``asyncio.gather``, no deadline, and keeps the best
  ``k`` (what a user would write by hand; given a generous connection pool so the comparison
  is about the fan-out logic, not a pool setting).

The open-loop load generator (:func:`bench.loadgen.run_load`) runs in *this* process, so it
never competes with the servers for their event loops (the machine's two cores are shared by
the three processes, as they would be in production by neighbours). Latency is measured from
each request's intended send time (no coordinated omission) into HdrHistograms.

Two measurements:

1. Throughput: for each service, the highest offered rate it sustains with p99 < 50 ms and at
   least 99% of answers complete (200, full coverage). Rates grow geometrically until a step
   fails (a failing step is repeated once, to tell a noise spike from the knee), then the
   interval is bisected. The two services' steps alternate, so drifts in machine load hit both
   alike. ``ratio_vs_naive`` = aggregator rate / peer rate.
2. One slow shard: the shard process is restarted with shard 0 answering after 1 s; both
   services get the same open-loop load, the aggregator with ``deadline_ms=100``. Reported:
   the aggregator's p99 overrun (response time - deadline; target <= 5 ms) next to the peer's
   p99 (which waits for the slow shard). The load is a quarter of the aggregator's measured
   capacity (``--slow-rate`` to fix it): the question is how well the deadline holds on a
   healthy service, not how queues grow near saturation (the throughput part covers that).

Bounded: every step is a few seconds, the ladder has a maximum rate, and the whole run takes
about two to four minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.wire import dump_json
from bench.histogram import LatencyHistogram
from bench.loadgen import (
    LoadResult,
    LoadSpec,
    RequestResult,
    RequestStatus,
    classify_http,
    run_load,
)
from bench.processes import ChildProcesses

__all__ = ["add_arguments", "run"]

SHARDS = 8
K = 10
#: The throughput criterion: p99 latency below this, in milliseconds.
P99_LIMIT_MS = 50.0
#: The throughput criterion: at least this share of measured requests answered completely.
MIN_COMPLETE_SHARE = 0.99
#: Deadline of the slow-shard measurement, and the slow shard's latency.
SLOW_DEADLINE_MS = 100.0
SLOW_SHARD_SPEC = "constant:1s"
#: Query texts, used in turn (the simulated shards memoise their answers per text).
TEXTS = tuple(f"query {i}" for i in range(64))


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How the benchmark runs; rates in requests/s, times in seconds."""

    step_s: float = 4.0
    warmup_s: float = 1.0
    start_rate: float = 100.0
    growth: float = 1.5
    max_rate: float = 5000.0
    bisect_steps: int = 2
    slow_rate: float | None = None
    slow_fraction: float = 0.25
    slow_s: float = 6.0
    docs_per_shard: int = 1000
    loop: str = "uvloop"
    seed: int = 1


# -- server processes ----------------------------------------------------------------------------


def _shard_process(config: BenchConfig, slow: bool, conn: Connection) -> None:
    """Serve 8 simulated shards until the parent closes ``conn``."""
    from shards.local_cluster import LocalShardCluster
    from shards.sim import simulated_cluster

    async def main() -> None:
        backends = simulated_cluster(
            SHARDS,
            "constant:0ms",
            seed=config.seed,
            docs_per_shard=config.docs_per_shard,
            slow={0: SLOW_SHARD_SPEC} if slow else None,
        )
        async with LocalShardCluster(backends) as cluster:
            freeze_startup_heap()  # as both serve commands do once start-up is done
            conn.send([(e.name, e.url, e.doc_count) for e in cluster.endpoints])
            await _until_parent_closes(conn)

    run_loop(main, config.loop)


def _front_process(
    config: BenchConfig, shards: Sequence[tuple[str, str, int]], conn: Connection
) -> None:
    """Serve the aggregator and the naive peer until the parent closes ``conn``."""
    from aggregator.client import HttpShard, ShardClient
    from aggregator.config import LimitsConfig
    from aggregator.coordinator import Coordinator
    from aggregator.service import ServiceSettings, create_app, create_runner, create_site

    async def main() -> None:
        async with (
            ShardClient() as client,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024, limit_per_host=128)
            ) as naive_session,
        ):
            backends = [HttpShard(name, url, docs, client) for name, url, docs in shards]
            coordinator = Coordinator(backends)
            aggregator_app = create_app(
                coordinator, settings=ServiceSettings(default_deadline_ms=1000.0)
            )
            naive_app = _naive_app(naive_session, [url for _, url, _ in shards])
            runners = []
            try:
                urls = []
                for app in (aggregator_app, naive_app):
                    # The aggregator runs as the serve command runs it (its limits, JSON
                    # errors, arrival stamps, early 503s); the peer on aiohttp's own runner.
                    runner = (
                        create_runner(app, LimitsConfig())
                        if app is aggregator_app
                        else web.AppRunner(app, handler_cancellation=True, access_log=None)
                    )
                    await runner.setup()
                    runners.append(runner)
                    # One listen backlog for both, the serve command's.
                    await create_site(runner, "127.0.0.1", 0, LimitsConfig()).start()
                    urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}/search")
                freeze_startup_heap()  # for both services, as the serve command does
                conn.send(urls)
                await _until_parent_closes(conn)
            finally:
                for runner in runners:
                    await runner.cleanup()
                await coordinator.aclose(timeout_s=1.0)

    run_loop(main, config.loop)


def _naive_app(session: aiohttp.ClientSession, shard_urls: Sequence[str]) -> web.Application:
    """The peer: gather every shard's answer, no deadline, keep the best k."""

    async def search(request: web.Request) -> web.Response:
        text = request.query["q"]
        k = int(request.query.get("k", str(K)))

        async def one(url: str) -> list[dict[str, Any]]:
            async with session.post(url + "/search", json={"q": text, "k": k}) as resp:
                body = await resp.json()
                return list(body.get("hits", ())) if resp.status == 200 else []

        replies = await asyncio.gather(*(one(u) for u in shard_urls))
        hits = [hit for reply in replies for hit in reply]
        return web.json_response({"hits": heapq.nlargest(k, hits, key=lambda h: h["score"])})

    app = web.Application()
    app.router.add_get("/search", search)
    return app


async def _until_parent_closes(conn: Connection) -> None:
    def wait() -> None:
        try:
            conn.recv()
        except EOFError:
            pass

    await asyncio.get_running_loop().run_in_executor(None, wait)


class _Servers:
    """The two server processes of one measurement; closing stops both."""

    def __init__(self, config: BenchConfig, *, slow: bool) -> None:
        self._children = ChildProcesses()
        try:
            _, shards = self._children.start(_shard_process, config, slow)
            _, urls = self._children.start(_front_process, config, shards)
        except BaseException:
            self._children.close()
            raise
        self.aggregator_url, self.naive_url = urls

    def close(self) -> None:
        self._children.close()


# -- load ----------------------------------------------------------------------------------------


class _Target:
    """GET ``url?q=..&k=..``; classify with the aggregator's rules, or as "any 200" for the
    naive peer (whose answer carries no completeness)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        params: Mapping[str, str],
        classify: Callable[[int, bytes], RequestResult],
    ) -> None:
        self.session = session
        self.url = url
        self.params = dict(params)
        self.classify = classify

    async def __call__(self, index: int) -> RequestResult:
        params = {"q": TEXTS[index % len(TEXTS)], "k": str(K), **self.params}
        try:
            async with self.session.get(self.url, params=params) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            return RequestResult(RequestStatus.TIMEOUT, reason="client timeout")
        except aiohttp.ClientError as exc:
            return RequestResult(RequestStatus.ERROR, reason=type(exc).__name__)
        return self.classify(status, body)


def _classify_naive(status: int, body: bytes) -> RequestResult:
    if status != 200:
        return RequestResult(RequestStatus.ERROR, reason=f"HTTP {status}")
    return RequestResult(RequestStatus.OK, coverage=1.0)


@dataclass(slots=True)
class Step:
    """One open-loop run at one offered rate."""

    service: str
    rate_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    complete_share: float
    achieved_per_s: float
    generator_problems: list[str]
    passed: bool
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "rate_per_s": round(self.rate_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "complete_share": round(self.complete_share, 4),
            "achieved_per_s": round(self.achieved_per_s, 1),
            "generator_problems": self.generator_problems,
            "passed": self.passed,
            "statuses": self.statuses,
        }


async def _load(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    duration_s: float,
    warmup_s: float,
    *,
    naive: bool,
    params: Mapping[str, str] | None = None,
    seed: int = 1,
) -> LoadResult:
    target = _Target(session, url, params or {}, _classify_naive if naive else classify_http)
    spec = LoadSpec(
        rate_per_s=rate,
        duration_s=duration_s,
        warmup_s=warmup_s,
        arrivals="poisson",
        max_inflight=2000,
        drain_s=5.0,
        seed=seed,
    )
    return await run_load(target, spec)


def _step(service: str, rate: float, result: LoadResult) -> Step:
    summary = result.latency.summary()
    measured = int(result.measured.sum())
    complete = result.count(RequestStatus.OK)
    share = complete / measured if measured else 0.0
    problems = result.rate_problems()
    # Generator lag alone does not fail a step: latency runs from the intended send time, so
    # lateness already counts in the p99. Dropped sends do: that load was never offered.
    passed = summary.p99_ms < P99_LIMIT_MS and share >= MIN_COMPLETE_SHARE and not result.dropped
    return Step(
        service,
        rate,
        summary.p50_ms,
        summary.p99_ms,
        summary.max_ms,
        share,
        result.achieved_rate_per_s,
        problems,
        passed,
        {s.name.lower(): n for s in RequestStatus if (n := result.count(s))},
    )


@dataclass(slots=True)
class _Ladder:
    """One service's search for its highest sustained rate."""

    service: str
    url: str
    naive: bool
    config: BenchConfig
    rate: float
    best: float = 0.0
    worst_fail: float = math.inf
    retried: bool = False  # the current rate failed once already
    bisections: int = 0
    steps: list[Step] = field(default_factory=list)

    @property
    def done(self) -> bool:
        if math.isinf(self.worst_fail):
            return self.rate > self.config.max_rate
        return self.bisections >= self.config.bisect_steps

    def record(self, step: Step) -> None:
        """Take one step's verdict and choose the next rate."""
        self.steps.append(step)
        if math.isinf(self.worst_fail):  # climbing
            if step.passed:
                self.retried = False
                self.best = step.rate_per_s
                self.rate = step.rate_per_s * self.config.growth
                return
            if not self.retried:
                self.retried = True  # the same rate once more: a noise spike, or the knee?
                return
            self.worst_fail = step.rate_per_s
        else:  # bisecting between the best pass and the lowest failure
            self.bisections += 1
            if step.passed:
                self.best = max(self.best, step.rate_per_s)
            else:
                self.worst_fail = min(self.worst_fail, step.rate_per_s)
        self.rate = (self.best + self.worst_fail) / 2.0


async def _throughput(
    session: aiohttp.ClientSession,
    servers: _Servers,
    config: BenchConfig,
    log: Callable[[str], None],
) -> tuple[_Ladder, _Ladder]:
    ladders = (
        _Ladder("aggregator", servers.aggregator_url, False, config, config.start_rate),
        _Ladder("naive", servers.naive_url, True, config, config.start_rate),
    )
    # Warm both services (connections, caches) before anything is measured.
    for ladder in ladders:
        await _load(session, ladder.url, 50.0, 1.0, 0.5, naive=ladder.naive)
    rounds = 0
    while not all(ladder.done for ladder in ladders):
        rounds += 1
        # Alternate who goes first, so a burst of machine load does not always hit one side.
        for ladder in ladders if rounds % 2 else reversed(ladders):
            if ladder.done:
                continue
            rate = ladder.rate
            result = await _load(
                session, ladder.url, rate, config.step_s + config.warmup_s, config.warmup_s,
                naive=ladder.naive, seed=len(ladder.steps) + 1,
            )  # fmt: skip
            step = _step(ladder.service, rate, result)
            ladder.record(step)
            log(_describe(step))
            await asyncio.sleep(0.5)  # let the servers settle between steps
    return ladders


async def _slow_shard(
    session: aiohttp.ClientSession,
    servers: _Servers,
    rate: float,
    config: BenchConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    duration_s = config.slow_s + config.warmup_s
    params = {"deadline_ms": f"{SLOW_DEADLINE_MS:g}"}
    aggregator = await _load(
        session, servers.aggregator_url, rate, duration_s, config.warmup_s,
        naive=False, params=params,
    )  # fmt: skip
    # The deadline's figures count answers (200: complete or partial) only: a query shed
    # with a fast 503 says nothing about whether the deadline held, and counting it would
    # pull the percentiles down.
    agg = aggregator.answered.summary()
    statuses = {s.name.lower(): n for s in RequestStatus if (n := aggregator.count(s))}
    log(
        f"slow shard, aggregator (deadline {SLOW_DEADLINE_MS:g} ms) at {rate:.0f}/s: "
        f"p50 {agg.p50_ms:.1f} ms, p99 {agg.p99_ms:.1f} ms, max {agg.max_ms:.1f} ms {statuses}"
    )
    naive = await _load(session, servers.naive_url, rate, duration_s, config.warmup_s, naive=True)
    peer = naive.latency.summary()
    log(
        f"slow shard, naive peer at {rate:.0f}/s: "
        f"p50 {peer.p50_ms:.1f} ms, p99 {peer.p99_ms:.1f} ms, max {peer.max_ms:.1f} ms"
    )
    measured = int(aggregator.measured.sum())
    # Where the overrun goes: the aggregator's own took_ms (from headers read to answer
    # built), and the client's time from the actual send (so without the generator's lag).
    took = LatencyHistogram()
    for took_ms in aggregator.server_ms[aggregator.measured].tolist():
        if not math.isnan(took_ms):
            took.record_s(took_ms / 1000.0)
    server = took.summary()
    service = aggregator.service.summary()
    return {
        "slow_shard_rate_per_s": round(rate, 1),
        "slow_shard_statuses": statuses,
        "slow_shard_deadline_ms": SLOW_DEADLINE_MS,
        "slow_shard_p50_ms": round(agg.p50_ms, 3),
        "slow_shard_p99_ms": round(agg.p99_ms, 3),
        "slow_shard_p99_overrun_ms": round(agg.p99_ms - SLOW_DEADLINE_MS, 3),
        "slow_shard_p999_overrun_ms": round(agg.p999_ms - SLOW_DEADLINE_MS, 3),
        "slow_shard_max_overrun_ms": round(agg.max_ms - SLOW_DEADLINE_MS, 3),
        "slow_shard_from_send_p99_ms": round(service.p99_ms, 3),
        "slow_shard_server_took_p50_ms": _ms_or_none(server.p50_ms),
        "slow_shard_server_took_p99_ms": _ms_or_none(server.p99_ms),
        "slow_shard_server_took_max_ms": _ms_or_none(server.max_ms),
        "slow_shard_partial_share": round(
            aggregator.count(RequestStatus.PARTIAL) / measured if measured else 0.0, 4
        ),
        "slow_shard_generator_problems": aggregator.rate_problems(),
        "slow_shard_naive_p50_ms": round(peer.p50_ms, 3),
        "slow_shard_naive_p99_ms": round(peer.p99_ms, 3),
        "slow_shard_naive_generator_problems": naive.rate_problems(),
    }


def _ms_or_none(value_ms: float) -> float | None:
    """A figure for the JSON report: ``None`` where nothing was measured (``nan``)."""
    return None if math.isnan(value_ms) else round(value_ms, 3)


def _describe(step: Step) -> str:
    verdict = "ok" if step.passed else "FAIL"
    extra = f"; generator: {', '.join(step.generator_problems)}" if step.generator_problems else ""
    return (
        f"{step.service:>10} {step.rate_per_s:7.0f}/s: p50 {step.p50_ms:6.2f} ms, "
        f"p99 {step.p99_ms:7.2f} ms, complete {step.complete_share:6.1%} {verdict}{extra} "
        f"{step.statuses}"
    )


async def _bench(config: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    started_s = time.perf_counter()
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=2048, limit_per_host=2048)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        servers = await loop.run_in_executor(None, lambda: _Servers(config, slow=False))
        try:
            aggregator, naive = await _throughput(session, servers, config, log)
        finally:
            await loop.run_in_executor(None, servers.close)
        await session.close()
    connector = aiohttp.TCPConnector(limit=2048, limit_per_host=2048)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        slow_rate = config.slow_rate or max(10.0, config.slow_fraction * aggregator.best)
        slow_servers = await loop.run_in_executor(None, lambda: _Servers(config, slow=True))
        try:
            slow = await _slow_shard(session, slow_servers, slow_rate, config, log)
        finally:
            await loop.run_in_executor(None, slow_servers.close)
    ratio = aggregator.best / naive.best if naive.best > 0 else math.nan
    return {
        "qps": round(aggregator.best, 1),
        "naive_qps": round(naive.best, 1),
        "ratio_vs_naive": round(ratio, 3),
        **slow,
        "targets": {
            "ratio_vs_naive_ok": ratio >= 1.0,
            "slow_shard_p99_overrun_ok": slow["slow_shard_p99_overrun_ms"] <= 5.0,
        },
        "criterion": {"p99_below_ms": P99_LIMIT_MS, "min_complete_share": MIN_COMPLETE_SHARE},
        "steps": [s.to_dict() for s in (*aggregator.steps, *naive.steps)],
        "config": {
            "shards": SHARDS,
            "k": K,
            "step_s": config.step_s,
            "warmup_s": config.warmup_s,
            "loop": config.loop,
            "arrivals": "poisson",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0],
        },
        "elapsed_s": round(time.perf_counter() - started_s, 1),
    }


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m bench http``."""
    defaults = BenchConfig()
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default=defaults.loop)
    parser.add_argument(
        "--step-s", type=float, default=defaults.step_s, help="measured seconds per rate step"
    )
    parser.add_argument(
        "--start-rate", type=float, default=defaults.start_rate, help="first offered rate (/s)"
    )
    parser.add_argument(
        "--max-rate", type=float, default=defaults.max_rate, help="highest rate tried (/s)"
    )
    parser.add_argument(
        "--slow-rate",
        type=float,
        default=None,
        help="slow-shard run rate (/s; default a quarter of the aggregator's measured capacity)",
    )
    parser.add_argument(
        "--slow-s", type=float, default=defaults.slow_s, help="slow-shard run seconds"
    )


def run(args: argparse.Namespace) -> int:
    """Run both measurements; print progress lines on stderr and the figures on stdout."""
    for name in ("step_s", "start_rate", "max_rate", "slow_rate", "slow_s"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number")
    if args.step_s > 30 or args.slow_s > 60:
        raise ValueError("--step-s must be <= 30 and --slow-s <= 60 (runs stay bounded)")
    config = BenchConfig(
        step_s=args.step_s,
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        slow_rate=args.slow_rate,
        slow_s=args.slow_s,
        loop=args.loop,
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_loop(lambda: _bench(config, log), config.loop)
    if args.json:
        sys.stdout.write(dump_json(result).decode() + "\n")
    else:
        for key, value in result.items():
            if key != "steps":
                print(f"{key:>36}: {value}")
    return 0
