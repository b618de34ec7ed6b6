"""``python -m bench tail-sockets``: replica selection, hedging and breakers over real sockets.

The system under test, over loopback, in three processes (the machine's two cores are shared
by all three, as the HTTP benchmark's are):

* a *shard process*: 8 shards x 2 replicas of :class:`shards.sim.SimulatedShard`, each replica
  behind its own shard server (:class:`shards.local_cluster.LocalShardCluster`); every replica
  answers in ``lognormal:median=5ms,sigma=0.3``, drawn per call (``vary_by_call``). It takes
  ``stop``/``start`` commands from this process to kill and revive one replica's server;
* a *front process*: one aggregator HTTP service (:func:`aggregator.service.create_app`, the
  real coordinator and :class:`aggregator.client.HttpShard` clients) per setting, each with its
  own :class:`aggregator.tail.TailTolerantPlanner`;
* this process: the open-loop load generator (:func:`bench.loadgen.run_load`, Poisson arrivals,
  latency from the intended send time, HdrHistograms) and a poller of ``GET /shards``.

Two measurements:

1. **One slow replica**: replica 1 of shard 0 answers 5% of its calls at 500 ms
   (:data:`SLOW_SPEC`). Three services over the same shards, in the same run, their load
   segments alternating (in order, then reversed) so drifts in machine load hit all alike:
   ``round_robin`` and ``round_robin_hedged`` (the slow replica keeps half of its shard's
   requests: hedging's effect alone), ``p2c`` (adaptive selection alone: the peak EWMA steers
   requests away from a replica that just answered slowly) and ``p2c_hedged`` (both). Hedges
   go at the shard's rolling p95; hedges and retries are capped at 5% of primary requests.
2. **One replica killed mid-run**: all replicas healthy, the ``p2c_hedged`` service under
   load; replica 1 of shard 3 has its server stopped (connections refused), later started
   again. Reported: requests sent to it between the kill and its breaker opening, and p99 of
   queries intended before the kill, while it was being found out (kill to breaker open), with
   the breaker open, and after its restart (the half-open probe closes the breaker).

The load average (``os.getloadavg``) is reported before and after each measurement: compare
settings within one run, never across runs on a loaded machine. Bounded: about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import orjson
from yarl import URL

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator.tail import TailConfig
from aggregator.wire import dump_json
from bench.histogram import LatencyHistogram
from bench.loadgen import (
    HttpSearchTarget,
    HttpSession,
    LoadResult,
    LoadSpec,
    RequestStatus,
    run_load,
)
from bench.processes import ChildProcesses

__all__ = ["BenchConfig", "add_arguments", "phase_summaries", "run"]

SHARDS = 8
REPLICAS = 2
K = 10
#: Every replica's latency.
FAST_SPEC = "lognormal:median=5ms,sigma=0.3"
#: The slow replica: 5% of its answers at 500 ms.
SLOW_SPEC = "mixture:0.95*lognormal:median=5ms,sigma=0.3+0.05*constant:500ms"
#: (shard, replica) of the slow replica and of the one killed.
SLOW_REPLICA = (0, 1)
KILLED_REPLICA = (3, 1)
#: A query slower than this counts as having waited for a 500 ms answer.
SLOW_QUERY_MS = 400.0
#: Query texts, used in turn.
TEXTS = tuple(f"query {i}" for i in range(64))
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How the benchmark runs; rates in requests/s, times in seconds."""

    rate_per_s: float = 30.0
    deadline_ms: float = 1000.0
    warmup_s: float = 3.0
    segment_s: float = 6.0
    rounds: int = 3
    hedge_percentile: float = 95.0
    backup_share: float = 0.05
    before_kill_s: float = 4.0
    down_s: float = 5.0
    after_restart_s: float = 4.0
    docs_per_shard: int = 1000
    loop: str = "uvloop"
    seed: int = 1

    def settings(self) -> dict[str, TailConfig]:
        """The services of the slow-replica measurement, by name."""
        return {
            "round_robin": TailConfig(selection="round_robin", hedge_percentile=None),
            "round_robin_hedged": self.hedged("round_robin"),
            "p2c": TailConfig(selection="p2c", hedge_percentile=None),
            "p2c_hedged": self.hedged(),
        }

    def hedged(self, selection: str = "p2c") -> TailConfig:
        """The full policy: hedging at the percentile, the shared budget, breakers."""
        return TailConfig(
            selection=selection,
            hedge_percentile=self.hedge_percentile,
            backup_share=self.backup_share,
        )


# -- server processes ----------------------------------------------------------------------------


def _index(shard: int, replica: int) -> int:
    return shard * REPLICAS + replica


def _shard_process(config: BenchConfig, slow: bool, conn: Connection) -> None:
    """Serve 8 x 2 simulated replicas; obey ``("stop"|"start", index)`` until EOF."""
    from shards.local_cluster import LocalShardCluster
    from shards.sim import SimulatedShard

    async def main() -> None:
        backends = [
            SimulatedShard(
                f"shard-{s}",
                config.docs_per_shard,
                SLOW_SPEC if slow and (s, r) == SLOW_REPLICA else FAST_SPEC,
                seed=config.seed,
                replica=f"r{r + 1}",
                vary_by_call=True,
            )
            for s in range(SHARDS)
            for r in range(REPLICAS)
        ]
        loop = asyncio.get_running_loop()
        async with LocalShardCluster(backends) as cluster:
            conn.send([(e.name, e.url, e.doc_count) for e in cluster.endpoints])
            while (command := await loop.run_in_executor(None, _recv, conn)) is not None:
                verb, index = command
                if verb == "stop":
                    await cluster.stop_shard(index)
                else:
                    await cluster.start_shard(index)
                conn.send(("ok", index))

    run_loop(main, config.loop)


def _front_process(
    config: BenchConfig,
    endpoints: Sequence[tuple[str, str, int]],
    settings: Mapping[str, TailConfig],
    conn: Connection,
) -> None:
    """One aggregator service per setting over the same shards, until EOF on ``conn``."""
    from aiohttp import web

    from aggregator.client import HttpShard, ShardClient
    from aggregator.coordinator import Coordinator
    from aggregator.service import ServiceSettings, create_app
    from aggregator.tail import TailTolerantPlanner

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ShardClient() as client:
            runners: list[web.AppRunner] = []
            coordinators: list[Coordinator] = []
            try:
                urls = {}
                for name, tail in settings.items():
                    backends = [HttpShard(n, url, docs, client) for n, url, docs in endpoints]
                    coordinator = Coordinator(backends, planner=TailTolerantPlanner(tail))
                    coordinators.append(coordinator)
                    app = create_app(
                        coordinator,
                        settings=ServiceSettings(default_deadline_ms=config.deadline_ms),
                    )
                    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
                    await runner.setup()
                    runners.append(runner)
                    await web.TCPSite(runner, "127.0.0.1", 0).start()
                    urls[name] = f"http://127.0.0.1:{runner.addresses[0][1]}"
                conn.send(urls)
                await loop.run_in_executor(None, _recv, conn)
            finally:
                for runner in runners:
                    await runner.cleanup()
                for coordinator in coordinators:
                    await coordinator.aclose(timeout_s=1.0)

    run_loop(main, config.loop)


def _recv(conn: Connection) -> Any:
    """The next message, or ``None`` once the other end closed."""
    try:
        return conn.recv()
    except EOFError:
        return None


# -- load ----------------------------------------------------------------------------------------


def _spec(config: BenchConfig, duration_s: float, seed: int, warmup_s: float = 0.0) -> LoadSpec:
    return LoadSpec(
        rate_per_s=config.rate_per_s,
        duration_s=duration_s,
        warmup_s=warmup_s,
        arrivals="poisson",
        max_inflight=1000,
        drain_s=5.0,
        seed=seed,
    )


def _target(session: HttpSession, base_url: str, config: BenchConfig) -> Any:
    params = {"k": str(K), "deadline_ms": f"{config.deadline_ms:g}"}
    return HttpSearchTarget(session, base_url + "/search", TEXTS, params)


async def _get_json(session: HttpSession, url: str) -> Any:
    parsed = URL(url)
    body = (await session.get(str(parsed.origin()), parsed.raw_path_qs)).body
    return orjson.loads(body)


@dataclass(slots=True)
class _Tally:
    """Latencies and counts of one setting, summed over its segments."""

    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    queries: int = 0
    slow_queries: int = 0
    extra_requests: int = 0
    not_ok: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, result: LoadResult) -> None:
        measured = result.measured
        self.latency.add(result.latency)
        self.queries += int(measured.sum())
        self.slow_queries += int((result.latency_s[measured] * 1000.0 >= SLOW_QUERY_MS).sum())
        self.extra_requests += result.extra_requests
        self.not_ok += int(measured.sum()) - result.count(RequestStatus.OK)
        self.problems.extend(result.rate_problems())

    def to_dict(self) -> dict[str, Any]:
        summary = self.latency.summary().to_dict()
        primaries = max(1, self.queries * SHARDS)
        return {
            **summary,
            "queries": self.queries,
            "not_ok": self.not_ok,
            "slow_queries_pct": round(100.0 * self.slow_queries / max(1, self.queries), 3),
            "extra_requests_pct": round(100.0 * self.extra_requests / primaries, 3),
            "generator_problems": self.problems,
        }


async def _slow_replica(config: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = config.settings()
    processes = ChildProcesses()
    load_before = os.getloadavg()
    try:
        _, endpoints = processes.start(_shard_process, config, True)
        _, urls = processes.start(_front_process, config, endpoints, settings)
        tallies = {name: _Tally() for name in settings}
        async with HttpSearchTarget.open_session(pool_size=256) as session:
            for i, name in enumerate(settings):
                progress(f"warm-up {name}")
                await run_load(
                    _target(session, urls[name], config),
                    _spec(config, config.warmup_s, config.seed + i),
                )
            names = list(settings)
            for round_ in range(config.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    progress(f"round {round_ + 1}/{config.rounds}: {name}")
                    seed = config.seed + 100 * (round_ + 1) + names.index(name)
                    result = await run_load(
                        _target(session, urls[name], config),
                        _spec(config, config.segment_s, seed, warmup_s=0.5),
                    )
                    tallies[name].add(result)
            shards = {name: await _get_json(session, urls[name] + "/shards") for name in names}
    finally:
        processes.close()
    out: dict[str, Any] = {"load_average_before": _load(load_before)}
    out["load_average_after"] = _load(os.getloadavg())
    out["settings"] = {}
    for name in settings:
        row = tallies[name].to_dict()
        listed = shards[name]
        slow = listed["shards"][SLOW_REPLICA[0]]["replicas"]
        row["slow_shard_replicas"] = [
            {k: r[k] for k in ("label", "requests", "ewma_latency_ms", "hedges_sent", "hedges_won")}
            for r in slow
        ]
        row["budget"] = listed["backup_budget"]
        out["settings"][name] = row
    p99 = {name: out["settings"][name]["p99_ms"] for name in settings}
    out["p99_reduction_round_robin"] = _ratio(p99["round_robin"], p99["round_robin_hedged"])
    out["p99_reduction_p2c"] = _ratio(p99["p2c"], p99["p2c_hedged"])
    return out


async def _killed_replica(config: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    processes = ChildProcesses()
    load_before = os.getloadavg()
    index = _index(*KILLED_REPLICA)
    shard, replica = KILLED_REPLICA
    try:
        shard_conn, endpoints = processes.start(_shard_process, config, False)
        _, urls = processes.start(
            _front_process, config, endpoints, {"p2c_hedged": config.hedged()}
        )
        base = urls["p2c_hedged"]
        async with HttpSearchTarget.open_session(pool_size=256) as session:
            progress("warm-up")
            await run_load(_target(session, base, config), _spec(config, config.warmup_s, 7))
            polls: list[tuple[float, dict[str, Any]]] = []

            async def poll() -> None:
                while True:
                    listed = await _get_json(session, base + "/shards")
                    polls.append(
                        (time.perf_counter(), listed["shards"][shard]["replicas"][replica])
                    )
                    await asyncio.sleep(_POLL_S)

            total_s = config.before_kill_s + config.down_s + config.after_restart_s
            poller = asyncio.create_task(poll())
            try:
                start_s = time.perf_counter()
                load = asyncio.create_task(
                    run_load(_target(session, base, config), _spec(config, total_s, 11))
                )
                try:
                    await asyncio.sleep(config.before_kill_s)
                    progress(f"kill shard-{shard} replica {replica}")
                    at_kill = await _get_json(session, base + "/shards")
                    kill_s = time.perf_counter()
                    await _command(shard_conn, "stop", index)
                    await asyncio.sleep(
                        max(
                            0.0,
                            start_s + config.before_kill_s + config.down_s - time.perf_counter(),
                        )
                    )
                    progress(f"restart shard-{shard} replica {replica}")
                    restart_s = time.perf_counter()
                    await _command(shard_conn, "start", index)
                    result = await load
                finally:
                    if not load.done():
                        load.cancel()
                        await asyncio.gather(load, return_exceptions=True)
            finally:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
    finally:
        processes.close()
    killed_at = at_kill["shards"][shard]["replicas"][replica]
    opened = next(((t, s) for t, s in polls if t >= kill_s and s["breaker"] == "open"), None)
    open_s = opened[0] if opened else None
    closed = next(((t, s) for t, s in polls if t >= restart_s and s["breaker"] == "closed"), None)
    marks = {
        "before": start_s,
        "finding_out": kill_s,
        "breaker_open": open_s if open_s is not None else restart_s,
        "restarted": restart_s,
    }
    return {
        "load_average_before": _load(load_before),
        "load_average_after": _load(os.getloadavg()),
        "replica": f"shard-{shard}/{replica}",
        "requests_until_breaker_open": (
            opened[1]["requests"] - killed_at["requests"] if opened else None
        ),
        "errors_until_breaker_open": opened[1]["errors"] - killed_at["errors"] if opened else None,
        "breaker_open_after_ms": round((open_s - kill_s) * 1000.0, 1) if open_s else None,
        "breaker_closed_after_restart_ms": (
            round((closed[0] - restart_s) * 1000.0, 1) if closed else None
        ),
        "breaker_opened_times": polls[-1][1]["breaker_opened"] if polls else None,
        "phases": phase_summaries(result, start_s, marks),
        "not_ok": int(result.measured.sum()) - result.count(RequestStatus.OK),
        "generator_problems": result.rate_problems(),
    }


async def _command(conn: Connection, verb: str, index: int) -> None:
    loop = asyncio.get_running_loop()
    conn.send((verb, index))
    reply = await loop.run_in_executor(None, _recv, conn)
    if reply != ("ok", index):
        raise RuntimeError(f"the shard process did not {verb} replica {index}: {reply!r}")


def phase_summaries(
    result: LoadResult, start_s: float, marks: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Latency figures of the queries *intended* in each phase.

    ``marks`` maps phase names to their start instants (same clock as ``start_s``, the run's
    start), in order; a phase lasts until the next one starts (the last: to the run's end).
    """
    intended_s = start_s + result.offsets_s
    bounds = [*marks.values(), np.inf]
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(marks):
        mask = (intended_s >= bounds[i]) & (intended_s < bounds[i + 1])
        latencies_ms = result.latency_s[mask] * 1000.0
        histogram = LatencyHistogram()
        for value in result.latency_s[mask]:
            histogram.record_s(float(value))
        summary = histogram.summary().to_dict()
        summary["not_ok"] = int((result.status[mask] != RequestStatus.OK).sum())
        summary["slow_queries"] = int((latencies_ms >= SLOW_QUERY_MS).sum())
        out[name] = summary
    return out


def _load(values: tuple[float, float, float]) -> list[float]:
    return [round(v, 2) for v in values]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tail-sockets`` subcommand's options."""
    defaults = BenchConfig()
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rate", type=float, default=defaults.rate_per_s, help="offered queries/s (Poisson)"
    )
    parser.add_argument(
        "--segment-s", type=float, default=defaults.segment_s, help="seconds per load segment"
    )
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="segments per setting (alternating)"
    )
    parser.add_argument(
        "--hedge-percentile",
        type=float,
        default=defaults.hedge_percentile,
        help="hedge after this percentile of the shard's recent latency",
    )
    parser.add_argument(
        "--only", choices=("slow", "kill"), help="run one of the two measurements only"
    )
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop (default uvloop)"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)


def run(args: argparse.Namespace) -> int:
    """Run the measurements; print a report (or JSON); 0 on completion."""
    if not 1 <= args.rate <= 1000:
        raise ValueError(f"--rate must be in 1..1000 queries/s, got {args.rate:g}")
    if not 1 <= args.segment_s <= 60:
        raise ValueError(f"--segment-s must be in 1..60, got {args.segment_s:g}")
    if not 1 <= args.rounds <= 10:
        raise ValueError(f"--rounds must be in 1..10, got {args.rounds}")
    config = BenchConfig(
        rate_per_s=args.rate,
        segment_s=args.segment_s,
        rounds=args.rounds,
        hedge_percentile=args.hedge_percentile,
        loop=args.loop,
        seed=args.seed,
    )
    config.hedged()  # validates the percentile before anything starts

    def progress(message: str) -> None:
        if not args.json:
            print(f"  {message}", file=sys.stderr, flush=True)

    async def main() -> dict[str, Any]:
        report: dict[str, Any] = {
            "config": asdict(config),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
        started = time.perf_counter()
        if args.only in (None, "slow"):
            report["slow_replica"] = await _slow_replica(config, progress)
        if args.only in (None, "kill"):
            report["killed_replica"] = await _killed_replica(config, progress)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        return report

    report = run_loop(main, config.loop)
    if args.json:
        sys.stdout.buffer.write(dump_json(report) + b"\n")
    else:
        _print(report)
    return 0


def _print(report: Mapping[str, Any]) -> None:
    slow = report.get("slow_replica")
    if slow is not None:
        print(
            f"one slow replica (shard-{SLOW_REPLICA[0]}/{SLOW_REPLICA[1]}: {SLOW_SPEC}); "
            f"load average {slow['load_average_before']} -> {slow['load_average_after']}"
        )
        print(
            f"{'setting':<18} {'queries':>7} {'p50':>8} {'p99':>8} {'p99.9':>8} "
            f"{'max':>8} {'>=400ms':>8} {'extra':>7}"
        )
        for name, row in slow["settings"].items():
            print(
                f"{name:<18} {row['queries']:>7} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
                f"{row['p999_ms']:>8.1f} {row['max_ms']:>8.1f} {row['slow_queries_pct']:>7.2f}% "
                f"{row['extra_requests_pct']:>6.2f}%"
            )
        print(
            f"p99 without / with hedging: round_robin {slow['p99_reduction_round_robin']}x, "
            f"p2c {slow['p99_reduction_p2c']}x"
        )
    killed = report.get("killed_replica")
    if killed is not None:
        print(
            f"one replica killed ({killed['replica']}); load average "
            f"{killed['load_average_before']} -> {killed['load_average_after']}"
        )
        print(
            f"requests to it until its breaker opened: {killed['requests_until_breaker_open']} "
            f"(open {killed['breaker_open_after_ms']} ms after the kill; closed "
            f"{killed['breaker_closed_after_restart_ms']} ms after the restart)"
        )
        for name, row in killed["phases"].items():
            print(
                f"  {name:<13} n={row['count']:>4} p50 {row['p50_ms']} p99 {row['p99_ms']} "
                f"max {row['max_ms']} not ok {row['not_ok']}"
            )
    print(f"wall time {report['wall_s']} s")
