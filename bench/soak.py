"""``python -m bench soak``: offer five times the capacity, then check nothing broke or leaked.

Three processes on loopback, so the load generator never shares an event loop with what it
measures (they do share the machine's cores, hence the shards' priority below):

* shards: ``python -m shards serve --sim 8 --latency 'lognormal:median=5ms,sigma=0.5'``, on
  the CPU time the other two leave (:data:`DEFAULT_SHARD_PRIORITY`: they stand in for other
  machines);
* the aggregator: ``python -m bench.soak '<json>'`` (this module run as a script), which
  builds the same stack as ``python -m aggregator serve --config ...`` from the same public
  pieces and the same default limits (:class:`aggregator.config.LimitsConfig`): one
  :class:`~aggregator.client.ShardClient`, :class:`~aggregator.client.HttpShard` per shard,
  :class:`~aggregator.Coordinator`, :class:`~aggregator.admission.Admission`,
  :func:`~aggregator.service.create_app`. It adds one route, ``GET /debug/soak``, that reports
  what cannot be read from outside the process: asyncio tasks alive, straggler tasks still
  unwinding, shard requests in flight, admission slots held and waiting. It serves until its
  stdin closes, so it never outlives the run;
* this process: the open-loop load generator (:mod:`bench.loadgen`; latency stamped from each
  request's *intended* send time, HdrHistogram percentiles).

The run, about 60 s by default:

1. Capacity (a short ramp): 2 s steps at 100, 200, 400, ... queries/s until a step misses
   twice in a row (more than 1% of queries not answered 200, p99 over the deadline, or the
   generator could not keep the rate), then one step between the last good and the first
   bad rate (if even 100/s misses, the ramp steps down: 50, 25, 12.5). The capacity is the
   highest good rate.
2. Baseline: the server's resident memory (``VmRSS``), open file descriptors
   (``/proc/PID/fd``) and ``/debug/soak`` counters, with no load.
3. Overload: five times the capacity for ``--overload-s`` (30 s). Admitted queries (HTTP 200)
   must keep p99 <= deadline + 10 ms; the excess must be shed with 503 + ``Retry-After``, and
   the p99 of those 503s must be <= 5 ms.
4. Recovery: from the instant the overload's last request is sent, half the capacity for 4 s.
   ``recovery_s`` is when the first 0.5 s (five 100 ms windows of intended send times) begins
   in which every window has at least 95% of its queries answered 200 within deadline + 10 ms.
   Target: <= 2 s.
5. Leaks: every client connection is closed, the server settles (admission and shard requests
   at zero, at most 5 s), and the same readings are taken again. ``leaked_tasks`` and
   ``leaked_fds`` are the differences from the baseline; idle keep-alive connections to the
   shards are a bounded pool (``max_connections_per_shard`` x shards), not a leak, so they are
   counted apart (``pooled_shard_connections``) and left out of ``leaked_fds``.
   ``rss_growth_mb`` is the change in resident memory (target: < 64 MB).
   ``cpu_cores_during_overload`` says how busy each process was (from ``/proc/PID/stat``),
   ``steal_share_during_overload`` how much CPU the hypervisor took (``/proc/stat``), and
   ``quiet_host`` whether that was under 0.5% (:data:`QUIET_HOST_MAX_STEAL`).

Latencies are measured from the client side, from each request's intended send time, so
time spent waiting in the server's accept queue, or behind the generator's own lag, counts.
``shed_service_latency`` times the 503s from their actual send instead, which leaves the
generator's lag (``generator_lag_p99_ms``) out and shows the server's own part.

``--max-in-flight``, ``--max-waiting`` and ``--min-budget-ms`` override the admission limits
(default: the serve command's, :class:`aggregator.config.LimitsConfig`), to compare settings.
The command exits 0 whether or not the targets are met; ``targets`` in the output says which.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson
from aiohttp import web

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.config import LimitsConfig
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
from bench.serve_system import wait_for_stdin_eof

__all__ = [
    "SoakSettings",
    "add_arguments",
    "fd_kinds",
    "machine_ticks",
    "recovery_time_s",
    "run",
    "soak",
    "steal_share",
]

#: The simulated cluster behind the aggregator.
DEFAULT_SHARDS = 8
#: How the shard process is scheduled: ``idle`` (Linux's ``SCHED_IDLE``: it runs only on CPU
#: time the other processes leave), ``low`` (niceness 10) or ``normal``.
#:
#: Why not as an equal: the shards stand in for other machines. Here they share two cores with
#: the aggregator and the load generator, and at 5x overload the three want about 1.6 of
#: them; whenever all three are runnable, one waits for a core, and when that is the
#: aggregator or the generator, the wait lands on the 503s being timed. Niceness alone does
#: not stop that: a woken process still waited up to 4 ms for a nice-10 shard process to
#: finish its time slice (``perf sched latency``), while a ``SCHED_IDLE`` one is preempted at
#: once. The shards still get the half core they need from the idle time. Measured
#: (bench/RESULTS.md, overload soak, 2026-12-01 evening): shed p99 3.0-4.4 ms with ``idle``
#: against 4.9-6.3 ms with ``low``, each in runs with under 0.5% VM steal, admitted
#: throughput the same.
SHARD_PRIORITIES = ("idle", "low", "normal")
DEFAULT_SHARD_PRIORITY = "idle"
#: The niceness of ``low``.
LOW_PRIORITY_NICE = 10
DEFAULT_LATENCY = "lognormal:median=5ms,sigma=0.5"
DEFAULT_DEADLINE_MS = 100.0
#: Offered load during the soak, as a multiple of the measured capacity.
DEFAULT_OVERLOAD_FACTOR = 5.0
#: Capacity ramp: first rate (queries/s), growth factor per step, step length and top rate.
RAMP_START_QPS = 100.0
RAMP_FACTOR = 2.0
RAMP_STEP_S = 2.0
RAMP_MAX_QPS = 6400.0
#: The lowest rate the ramp tries when even the first step misses.
RAMP_MIN_QPS = 12.5
#: A ramp step is good when at most this share of its queries is not answered 200.
RAMP_MAX_BAD_SHARE = 0.01
#: Recovery load, as a share of the capacity, and how long it runs (s).
RECOVERY_SHARE = 0.5
RECOVERY_RUN_S = 4.0
#: Recovery windows: width (s), how many in a row must be good, and what "good" means.
WINDOW_S = 0.1
GOOD_WINDOWS = 5
WINDOW_GOOD_SHARE = 0.95
#: The targets the issue sets.
ADMITTED_OVERRUN_TARGET_MS = 10.0
SHED_P99_TARGET_MS = 5.0
RECOVERY_TARGET_S = 2.0
RSS_GROWTH_TARGET_MB = 64.0
#: VM steal during the overload below which the host counts as quiet (``quiet_host``): in
#: this project's runs, all seven under 0.5% met the shed target and ten of eleven over
#: 0.85% missed it (bench/RESULTS.md): figures from a run that is not quiet measure the host.
QUIET_HOST_MAX_STEAL = 0.005
#: How long the server may take to settle after the load stops before leaks are counted (s).
SETTLE_MAX_S = 5.0
#: Client connections the generator may open to the aggregator, and requests in flight.
POOL_SIZE = 512
MAX_INFLIGHT = 4096
#: Query texts sent in turn.
TEXTS = ("tail latency", "hedged requests", "deadline propagation", "load shedding")

_ANSWERED_200 = np.array([RequestStatus.OK, RequestStatus.PARTIAL], dtype=np.int8)
_SHED = np.array([RequestStatus.SHED], dtype=np.int8)


@dataclass(frozen=True, slots=True)
class SoakSettings:
    """One soak run; times in seconds unless named otherwise.

    ``capacity_qps`` skips the ramp when given (for repeat runs at a known capacity).
    """

    shards: int = DEFAULT_SHARDS
    latency: str = DEFAULT_LATENCY
    deadline_ms: float = DEFAULT_DEADLINE_MS
    overload_factor: float = DEFAULT_OVERLOAD_FACTOR
    overload_s: float = 30.0
    capacity_qps: float | None = None
    loop: str = "uvloop"
    seed: int = 1
    max_in_flight: int | None = None
    max_waiting: int | None = None
    min_budget_ms: float | None = None
    max_loop_lag_ms: float | None = None
    standing_queue_ms: float | None = None
    shard_priority: str = DEFAULT_SHARD_PRIORITY

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 64:
            raise ValueError(f"--shards must be in 1..64, got {self.shards}")
        if not 1 <= self.deadline_ms <= 10_000:
            raise ValueError(f"--deadline-ms must be in 1..10000, got {self.deadline_ms}")
        if not 1 <= self.overload_factor <= 100:
            raise ValueError(f"--overload must be in 1..100, got {self.overload_factor}")
        if self.shard_priority not in SHARD_PRIORITIES:
            choices = ", ".join(SHARD_PRIORITIES)
            raise ValueError(
                f"--shard-priority must be one of {choices}, got {self.shard_priority!r}"
            )
        if not 1 <= self.overload_s <= 600:
            raise ValueError(f"--overload-s must be in 1..600, got {self.overload_s}")
        if self.capacity_qps is not None and not 1 <= self.capacity_qps <= 100_000:
            raise ValueError(f"--capacity must be in 1..100000, got {self.capacity_qps}")
        if self.max_in_flight is not None and not 1 <= self.max_in_flight <= 100_000:
            raise ValueError(f"--max-in-flight must be in 1..100000, got {self.max_in_flight}")
        if self.max_waiting is not None and not 0 <= self.max_waiting <= 100_000:
            raise ValueError(f"--max-waiting must be in 0..100000, got {self.max_waiting}")
        if self.max_loop_lag_ms is not None and not 0 <= self.max_loop_lag_ms <= 60_000:
            raise ValueError(f"--max-loop-lag-ms must be in 0..60000, got {self.max_loop_lag_ms}")
        if self.standing_queue_ms is not None and not 0 <= self.standing_queue_ms <= 60_000:
            raise ValueError(
                f"--standing-queue-ms must be in 0..60000, got {self.standing_queue_ms}"
            )
        if self.min_budget_ms is not None and not 0 <= self.min_budget_ms < self.deadline_ms:
            raise ValueError(f"--min-budget-ms must be in [0, deadline), got {self.min_budget_ms}")

    def limits(self) -> LimitsConfig:
        """The aggregator's limits: the serve command's defaults, admission as overridden."""
        defaults = LimitsConfig()
        return replace(
            defaults,
            max_in_flight=self.max_in_flight or defaults.max_in_flight,
            max_waiting=defaults.max_waiting if self.max_waiting is None else self.max_waiting,
            min_budget_ms=(
                defaults.min_budget_ms if self.min_budget_ms is None else self.min_budget_ms
            ),
            max_loop_lag_ms=(
                defaults.max_loop_lag_ms if self.max_loop_lag_ms is None else self.max_loop_lag_ms
            ),
            standing_queue_ms=(
                defaults.standing_queue_ms
                if self.standing_queue_ms is None
                else self.standing_queue_ms
            ),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m bench soak``."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default="uvloop")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS)
    parser.add_argument("--latency", default=DEFAULT_LATENCY, help="simulated shard behaviour")
    parser.add_argument("--deadline-ms", type=float, default=DEFAULT_DEADLINE_MS)
    parser.add_argument(
        "--overload", type=float, default=DEFAULT_OVERLOAD_FACTOR, help="x measured capacity"
    )
    parser.add_argument("--overload-s", type=float, default=30.0, help="length of the overload")
    parser.add_argument(
        "--capacity", type=float, default=None, help="skip the ramp: capacity in queries/s"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--shard-priority",
        choices=SHARD_PRIORITIES,
        default=DEFAULT_SHARD_PRIORITY,
        help="how the shard process is scheduled (they stand in for other machines)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="admission: queries running at once (default: the serve command's)",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=None,
        help="admission: queries waiting for a slot (default: the serve command's)",
    )
    parser.add_argument(
        "--min-budget-ms",
        type=float,
        default=None,
        help="admission: budget a query must have left to start (default: the serve command's)",
    )
    parser.add_argument(
        "--max-loop-lag-ms",
        type=float,
        default=None,
        help="admission: loop lag that lowers the in-flight limit (0: fixed; default: serve's)",
    )
    parser.add_argument(
        "--standing-queue-ms",
        type=float,
        default=None,
        help="admission: queue age that stops queueing (0: always queue; default: serve's)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the soak and print its figures; 0 whether or not the targets were met."""
    settings = SoakSettings(
        shards=args.shards,
        latency=args.latency,
        deadline_ms=args.deadline_ms,
        overload_factor=args.overload,
        overload_s=args.overload_s,
        capacity_qps=args.capacity,
        loop=args.loop,
        seed=args.seed,
        shard_priority=args.shard_priority,
        max_in_flight=args.max_in_flight,
        max_waiting=args.max_waiting,
        min_budget_ms=args.min_budget_ms,
        max_loop_lag_ms=args.max_loop_lag_ms,
        standing_queue_ms=args.standing_queue_ms,
    )
    result = run_loop(lambda: soak(settings, progress=not args.json), args.loop)
    if args.json:
        sys.stdout.write(dump_json(result).decode() + "\n")
    else:
        for key, value in result.items():
            print(f"{key:>32}: {value}")
    return 0


# -- the run -------------------------------------------------------------------------------------


async def soak(settings: SoakSettings, *, progress: bool = False) -> dict[str, Any]:
    """The whole soak; returns its figures (see the module docstring)."""

    def say(message: str) -> None:
        if progress:
            print(f"soak: {message}", file=sys.stderr, flush=True)

    started_s = time.perf_counter()
    async with AsyncExitStack() as stack:
        shards = await stack.enter_async_context(_start_shards(settings))
        server = await stack.enter_async_context(_start_aggregator(settings, shards))
        say(f"{settings.shards} shards and the aggregator (pid {server.pid}) are up")
        params = {"deadline_ms": f"{settings.deadline_ms:g}"}

        if settings.capacity_qps is None:
            capacity_qps, ramp = await _measure_capacity(server.url, params, settings, say)
        else:
            capacity_qps, ramp = settings.capacity_qps, []
        say(f"capacity {capacity_qps:.0f} queries/s")

        before = await server.settled_snapshot(shards.ports)
        say(f"baseline: {before}")

        overload_qps = settings.overload_factor * capacity_qps
        overload_spec = LoadSpec(
            rate_per_s=overload_qps,
            duration_s=settings.overload_s,
            max_requests=max(1, math.ceil(overload_qps * settings.overload_s * 1.3) + 16),
            max_inflight=MAX_INFLIGHT,
            drain_s=2.0 + settings.deadline_ms / 1000.0,
            seed=settings.seed,
        )
        recovery_qps = RECOVERY_SHARE * capacity_qps
        recovery_spec = LoadSpec(
            rate_per_s=recovery_qps,
            duration_s=RECOVERY_RUN_S,
            arrivals="constant",
            max_inflight=MAX_INFLIGHT,
            drain_s=2.0 + settings.deadline_ms / 1000.0,
            seed=settings.seed + 1,
        )
        say(f"overload: {overload_qps:.0f} queries/s for {settings.overload_s:g} s")
        async with (
            _session() as overload_session,
            _session() as recovery_session,
        ):
            overload_target = HttpSearchTarget(overload_session, server.url, TEXTS, params)
            recovery_target = HttpSearchTarget(recovery_session, server.url, TEXTS, params)
            loop = asyncio.get_running_loop()
            cpu_before = _cpu_s(server.pid, shards.proc.pid)
            machine_before = machine_ticks()
            overload_start_s = time.perf_counter()
            overload_task = loop.create_task(run_load(overload_target, overload_spec))
            try:
                peak = await _sample_peak(server, overload_start_s + settings.overload_s)
                cpu_after = _cpu_s(server.pid, shards.proc.pid)
                machine_after = machine_ticks()
                # The overload's last request is due now: normal load starts at once.
                overload_end_s = overload_start_s + overload_spec.duration_s
                recovery_start_s = time.perf_counter()
                recovery = await run_load(recovery_target, recovery_spec)
                overload = await overload_task
            finally:
                if not overload_task.done():  # an error above: stop the load, and wait for it
                    overload_task.cancel()
                    await asyncio.wait((overload_task,))
        say("load stopped; letting the server settle")
        after = await server.settled_snapshot(shards.ports)
        say(f"after: {after}")
        shed_by_reason = await server.shed_counts()

    result = _figures(
        settings,
        capacity_qps=capacity_qps,
        ramp=ramp,
        overload=overload,
        recovery=recovery,
        recovery_offset_s=recovery_start_s - overload_end_s,
        before=before,
        after=after,
        peak=peak,
    )
    window_s = max(1e-9, settings.overload_s)
    # Cores each process kept busy during the overload (1.0 = one core; the machine has 2).
    result["cpu_cores_during_overload"] = {
        name: round((cpu_after[i] - cpu_before[i]) / window_s, 2)
        for i, name in enumerate(("aggregator", "shards", "load_generator"))
    }
    steal = steal_share(machine_before, machine_after)
    result["steal_share_during_overload"] = steal
    result["quiet_host"] = steal is not None and steal < QUIET_HOST_MAX_STEAL
    result["shed_by_reason"] = shed_by_reason
    result["elapsed_s"] = round(time.perf_counter() - started_s, 1)
    return result


async def _measure_capacity(
    url: str, params: dict[str, str], settings: SoakSettings, say: Callable[[str], None]
) -> tuple[float, list[dict[str, Any]]]:
    """The highest ramp rate answered well (see the module docstring), and every step."""
    steps: list[dict[str, Any]] = []
    good_qps: float | None = None
    bad_qps: float | None = None
    rate = RAMP_START_QPS
    async with _session() as session:
        target = HttpSearchTarget(session, url, TEXTS, params)

        async def step(rate_qps: float) -> bool:
            spec = LoadSpec(
                rate_per_s=rate_qps,
                duration_s=RAMP_STEP_S,
                warmup_s=0.25,
                max_inflight=MAX_INFLIGHT,
                drain_s=1.0,
                seed=settings.seed + len(steps),
            )
            result = await run_load(target, spec)
            figures = _step_figures(result, settings.deadline_ms)
            steps.append(figures)
            say(
                f"ramp {rate_qps:.0f}/s: {'good' if figures['good'] else 'missed'} "
                f"(200s {figures['answered_200_share']:.3f}, p99 {figures['p99_ms']} ms)"
            )
            return bool(figures["good"])

        while rate <= RAMP_MAX_QPS:
            # A missed step is run once more before it counts: on a shared machine one
            # hiccup (the generator falling behind for a moment) must not set the capacity,
            # which every later figure is scaled from (measured: a first step at 100 /s
            # missed on the generator alone, and the "5x overload" that followed was 354 /s
            # against a service that answers 400).
            if await step(rate) or await step(rate):
                good_qps = rate
                rate *= RAMP_FACTOR
            else:
                bad_qps = rate
                break
        # Even the first step missed: step down instead, a few times at most.
        rate = RAMP_START_QPS / RAMP_FACTOR
        while good_qps is None and rate >= RAMP_MIN_QPS:
            if await step(rate):
                good_qps = rate
            else:
                bad_qps = rate
                rate /= RAMP_FACTOR
        if good_qps is not None and bad_qps is not None:
            middle = math.sqrt(good_qps * bad_qps)
            if await step(middle):
                good_qps = middle
    return (good_qps if good_qps is not None else RAMP_MIN_QPS), steps


def _step_figures(result: LoadResult, deadline_ms: float) -> dict[str, Any]:
    measured = result.measured
    total = int(measured.sum())
    answered = int((np.isin(result.status, _ANSWERED_200) & measured).sum())
    share = answered / total if total else 0.0
    p99_ms = result.latency.percentile_ms(99.0)
    good = share >= 1.0 - RAMP_MAX_BAD_SHARE and p99_ms <= deadline_ms and result.kept_rate
    return {
        "offered_qps": round(result.offered_rate_per_s, 1),
        "answered_200_share": round(share, 4),
        "p99_ms": _round(p99_ms),
        "kept_rate": result.kept_rate,
        "good": good,
    }


async def _sample_peak(server: _AggregatorProcess, until_s: float) -> dict[str, float]:
    """Sample the server's RSS and fds every 0.5 s until ``until_s`` (perf_counter time)."""
    peak_rss_mb = 0.0
    peak_fds = 0
    while True:
        now = time.perf_counter()
        peak_rss_mb = max(peak_rss_mb, server.rss_mb())
        peak_fds = max(peak_fds, server.open_fds())
        if now >= until_s:
            break
        await asyncio.sleep(min(0.5, until_s - now))
    return {"rss_mb": round(peak_rss_mb, 1), "fds": peak_fds}


# -- figures -------------------------------------------------------------------------------------


def _figures(
    settings: SoakSettings,
    *,
    capacity_qps: float,
    ramp: list[dict[str, Any]],
    overload: LoadResult,
    recovery: LoadResult,
    recovery_offset_s: float,
    before: _Snapshot,
    after: _Snapshot,
    peak: dict[str, float],
) -> dict[str, Any]:
    deadline_ms = settings.deadline_ms
    admitted = _histogram(overload, _ANSWERED_200)
    shed = _histogram(overload, _SHED)
    recovery_s = recovery_time_s(recovery, deadline_ms)
    if recovery_s is not None:
        recovery_s = max(0.0, recovery_s + recovery_offset_s)
    counts = {status.name.lower(): overload.count(status) for status in RequestStatus}
    admitted_p99_ms = admitted.percentile_ms(99.0)
    shed_p99_ms = shed.percentile_ms(99.0)
    leaked_tasks = after.tasks - before.tasks
    leaked_fds = after.unpooled_fds - before.unpooled_fds
    rss_growth_mb = after.rss_mb - before.rss_mb
    result: dict[str, Any] = {
        # The figures the issue asks for.
        "admitted_p99_overrun_ms": _round(admitted_p99_ms - deadline_ms),
        "shed_p99_ms": _round(shed_p99_ms),
        "rss_growth_mb": round(rss_growth_mb, 1),
        "leaked_tasks": leaked_tasks,
        "leaked_fds": leaked_fds,
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        # What they were measured under.
        "shards": settings.shards,
        "shard_latency": settings.latency,
        "shard_priority": settings.shard_priority,
        "deadline_ms": deadline_ms,
        "loop": settings.loop,
        "admission": {
            "max_in_flight": settings.limits().max_in_flight,
            "max_waiting": settings.limits().max_waiting,
            "min_budget_ms": settings.limits().min_budget_ms,
            "max_loop_lag_ms": settings.limits().max_loop_lag_ms,
            "standing_queue_ms": settings.limits().standing_queue_ms,
        },
        "capacity_qps": round(capacity_qps, 1),
        "overload_factor": settings.overload_factor,
        "offered_qps": round(overload.offered_rate_per_s, 1),
        "sent_qps": round(overload.send_rate_per_s, 1),
        "generator_kept_rate": overload.kept_rate,
        "generator_lag_p99_ms": _round(overload.lag.percentile_ms(99.0)),
        "generator_problems": overload.rate_problems(),
        "overload_s": settings.overload_s,
        "requests": counts,
        "failure_reasons": dict(sorted(overload.reasons.items(), key=lambda kv: -kv[1])[:8]),
        "admitted_qps": round((counts["ok"] + counts["partial"]) / settings.overload_s, 1),
        "admitted_latency": admitted.summary().to_dict(),
        "shed_latency": shed.summary().to_dict(),
        # From the actual send (excludes the generator's own lag): what the server costs.
        "shed_service_latency": _histogram(overload, _SHED, from_send=True).summary().to_dict(),
        "recovery_qps": round(recovery.offered_rate_per_s, 1),
        "rss_before_mb": round(before.rss_mb, 1),
        "rss_after_mb": round(after.rss_mb, 1),
        "rss_peak_mb": peak["rss_mb"],
        "fds_before": before.fds,
        "fds_after": after.fds,
        "fds_peak": peak["fds"],
        "fd_kinds_before": before.fd_kinds,
        "fd_kinds_after": after.fd_kinds,
        "pooled_shard_connections": after.pooled_fds,
        "pooled_shard_connections_bound": after.pool_bound,
        "tasks_before": before.tasks,
        "tasks_after": after.tasks,
        "task_kinds_before": before.task_kinds,
        "task_kinds_after": after.task_kinds,
        "lingering_after": after.lingering,
        "shard_requests_in_flight_after": after.shard_requests_in_flight,
        "settled": after.settled,
        "ramp": ramp,
    }
    result["targets"] = {
        "admitted_p99_overrun_ok": admitted_p99_ms - deadline_ms <= ADMITTED_OVERRUN_TARGET_MS,
        "shed_p99_ok": shed.count > 0 and shed_p99_ms <= SHED_P99_TARGET_MS,
        "rss_growth_ok": rss_growth_mb < RSS_GROWTH_TARGET_MB,
        "no_leaked_tasks": leaked_tasks <= 0,
        "no_leaked_fds": leaked_fds <= 0 and after.pooled_fds <= after.pool_bound,
        "recovery_ok": recovery_s is not None and recovery_s <= RECOVERY_TARGET_S,
    }
    return result


def _histogram(
    result: LoadResult, statuses: npt.NDArray[np.int8], *, from_send: bool = False
) -> LatencyHistogram:
    """Latencies of the measured requests that ended in ``statuses``: from the intended
    send, or (``from_send``) from the actual one, which leaves the generator's lag out."""
    histogram = LatencyHistogram()
    mask = np.isin(result.status, statuses) & result.measured
    values = result.service_s if from_send else result.latency_s
    histogram.record_many_s(values[mask & ~np.isnan(values)])
    return histogram


def recovery_time_s(result: LoadResult, deadline_ms: float) -> float | None:
    """When a run's load was served well again, in seconds from the run's start.

    Requests are grouped into :data:`WINDOW_S` windows by intended send time; a window is
    good when at least :data:`WINDOW_GOOD_SHARE` of its requests got a 200 within
    ``deadline_ms`` + :data:`ADMITTED_OVERRUN_TARGET_MS`. The answer is the start of the first
    :data:`GOOD_WINDOWS` good windows in a row; ``None`` if there is no such run.
    """
    limit_s = (deadline_ms + ADMITTED_OVERRUN_TARGET_MS) / 1000.0
    good = np.isin(result.status, _ANSWERED_200) & (result.latency_s <= limit_s)
    windows = math.ceil(result.spec.duration_s / WINDOW_S)
    # The epsilon keeps an offset of exactly k windows (0.7 s / 0.1 s) in window k.
    index = np.minimum(np.floor(result.offsets_s / WINDOW_S + 1e-9).astype(np.int64), windows - 1)
    sent = np.bincount(index, minlength=windows)
    ok = np.bincount(index, weights=good.astype(np.float64), minlength=windows)
    window_good = [sent[i] > 0 and ok[i] / sent[i] >= WINDOW_GOOD_SHARE for i in range(windows)]
    for start in range(windows - GOOD_WINDOWS + 1):
        if all(window_good[start : start + GOOD_WINDOWS]):
            return start * WINDOW_S
    return None


def _cpu_s(server_pid: int, shards_pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system) used so far by the aggregator, the shards and this process."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    own = os.times()
    return of(server_pid), of(shards_pid), own.user + own.system


def _deprioritise(pid: int, priority: str) -> None:
    """Schedule process ``pid`` as ``priority`` says (see :data:`DEFAULT_SHARD_PRIORITY`);
    lowering a child's priority needs no privilege. Where ``SCHED_IDLE`` does not exist,
    ``idle`` falls back to ``low``."""
    if priority == "idle" and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    elif priority in ("idle", "low"):
        os.setpriority(os.PRIO_PROCESS, pid, LOW_PRIORITY_NICE)


def machine_ticks() -> tuple[int, int] | None:
    """The machine's CPU time so far, in clock ticks: (stolen, all), from ``/proc/stat``;
    ``None`` where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
    ticks = [int(value) for value in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time its hypervisor gave to others between two readings
    of :func:`machine_ticks` (VM steal). Why report it: on a shared host, a few percent of
    steal moves millisecond percentiles by as much as any change under test (measured: the
    load generator alone against a server that only answers 503, p99 1.5 ms at 0.1% steal
    and 4.6 ms at 2.5%, same code)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 4)


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


def _session() -> HttpSession:
    return HttpSearchTarget.open_session(pool_size=POOL_SIZE, timeout_s=10.0)


# -- the child processes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shard:
    name: str
    url: str
    docs: int


class _ShardsProcess:
    """``python -m shards serve --sim N`` on ephemeral loopback ports."""

    def __init__(self, proc: asyncio.subprocess.Process, shards: Sequence[_Shard]) -> None:
        self.proc = proc
        self.shards = tuple(shards)

    @property
    def ports(self) -> frozenset[int]:
        return frozenset(int(s.url.rsplit(":", 1)[1]) for s in self.shards)


@asynccontextmanager
async def _start_shards(settings: SoakSettings) -> AsyncIterator[_ShardsProcess]:
    """The shard servers' process, stopped (SIGTERM, then SIGKILL) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards", "serve", "--sim", str(settings.shards),
        "--latency", settings.latency, "--seed", str(settings.seed),
        "--host", "127.0.0.1", "--base-port", "0", "--loop", settings.loop,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _deprioritise(proc.pid, settings.shard_priority)
        assert proc.stdout is not None
        shards = []
        async with asyncio.timeout(60):
            for _ in range(settings.shards):
                name, url, docs = (await proc.stdout.readline()).decode().split()
                shards.append(_Shard(name, url, int(docs)))
        yield _ShardsProcess(proc, shards)
    finally:
        await _stop(proc, close_stdin=False)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The server's state at one instant: memory, descriptors and its own counters."""

    rss_mb: float
    fds: int
    fd_kinds: dict[str, int]
    pooled_fds: int
    pool_bound: int
    tasks: int
    task_kinds: dict[str, int]
    lingering: int
    shard_requests_in_flight: int
    admission_in_flight: int
    admission_waiting: int
    settled: bool

    @property
    def unpooled_fds(self) -> int:
        return self.fds - self.pooled_fds

    def __str__(self) -> str:
        return (
            f"rss {self.rss_mb:.1f} MB, {self.fds} fds ({self.pooled_fds} pooled to shards), "
            f"{self.tasks} tasks, {self.lingering} lingering, "
            f"{self.shard_requests_in_flight} shard requests in flight"
        )


class _AggregatorProcess:
    """This module run as a script: the aggregator's HTTP service over the shard servers."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, pool_bound: int) -> None:
        self.proc = proc
        self.url = url
        self.base = url.removesuffix("/search")
        self.pool_bound = pool_bound

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return math.nan

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def debug(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.get(self.base + "/debug/soak", headers={"Connection": "close"}) as resp,
        ):
            data: dict[str, Any] = orjson.loads(await resp.read())
            return data

    async def shed_counts(self) -> dict[str, float]:
        """``aggregator_queries_shed_total`` by reason, from ``/metrics``."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.get(self.base + "/metrics", headers={"Connection": "close"}) as resp,
        ):
            text = (await resp.read()).decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("aggregator_queries_shed_total{"):
                labels, _, value = line.rpartition(" ")
                reason = labels.split('reason="', 1)[1].split('"', 1)[0]
                counts[reason] = float(value)
        return counts

    async def settled_snapshot(self, shard_ports: frozenset[int]) -> _Snapshot:
        """Wait (at most :data:`SETTLE_MAX_S`) for in-flight work to end, then read the state."""
        loop = asyncio.get_running_loop()
        give_up_s = loop.time() + SETTLE_MAX_S
        settled = False
        previous_tasks = -1
        while True:
            counters = await self.debug()
            quiet = (
                counters["admission_in_flight"] == 0
                and counters["admission_waiting"] == 0
                and counters["shard_requests_in_flight"] == 0
                and counters["lingering"] == 0
            )
            # Quiet, and the task count stopped moving (connection handlers have ended).
            if quiet and counters["tasks"] == previous_tasks:
                settled = True
                break
            previous_tasks = counters["tasks"]
            if loop.time() >= give_up_s:
                break
            await asyncio.sleep(0.25)
        kinds = fd_kinds(self.pid, shard_ports)
        return _Snapshot(
            rss_mb=self.rss_mb(),
            fds=sum(kinds.values()),
            fd_kinds=kinds,
            pooled_fds=sum(n for kind, n in kinds.items() if kind.endswith(":shard")),
            pool_bound=self.pool_bound,
            tasks=counters["tasks"],
            task_kinds=counters["task_kinds"],
            lingering=counters["lingering"],
            shard_requests_in_flight=counters["shard_requests_in_flight"],
            admission_in_flight=counters["admission_in_flight"],
            admission_waiting=counters["admission_waiting"],
            settled=settled,
        )


@asynccontextmanager
async def _start_aggregator(
    settings: SoakSettings, shards: _ShardsProcess
) -> AsyncIterator[_AggregatorProcess]:
    """This module as a script, serving the aggregator; stopped by closing its stdin."""
    argument = orjson.dumps(
        {
            "shards": [[s.name, s.url, s.docs] for s in shards.shards],
            "deadline_ms": settings.deadline_ms,
            "loop": settings.loop,
            "limits": dataclasses.asdict(settings.limits()),
        }
    ).decode()
    pool_bound = settings.limits().max_connections_per_shard * len(shards.shards)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", argument,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = await proc.stdout.readline()
        yield _AggregatorProcess(proc, str(orjson.loads(line)["url"]), pool_bound)
    finally:
        await _stop(proc, close_stdin=True)


async def _stop(proc: asyncio.subprocess.Process, *, close_stdin: bool) -> None:
    """Ask a child to stop (stdin EOF or SIGTERM), then kill it after 10 s."""
    if proc.returncode is None:
        if close_stdin and proc.stdin is not None:
            proc.stdin.close()
        else:
            proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


#: /proc/net/tcp socket states, by their hex code.
_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def fd_kinds(pid: int, shard_ports: frozenset[int]) -> dict[str, int]:
    """Open file descriptors of process ``pid`` by kind.

    TCP sockets are named ``tcp:STATE`` (``tcp:STATE:shard`` when connected to a shard
    port); other descriptors by what ``/proc/PID/fd`` links to (``pipe``,
    ``anon_inode:[eventpoll]``, ...). Descriptors closed while being read are skipped.
    """
    sockets: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    sockets[fields[9]] = (_TCP_STATES.get(fields[3], fields[3]), remote_port)
        except FileNotFoundError:
            continue
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found = sockets.get(target[len("socket:[") : -1])
            if found is None:
                kind = "socket:other"
            else:
                state, remote_port = found
                kind = f"tcp:{state}:shard" if remote_port in shard_ports else f"tcp:{state}"
        elif target.startswith(("pipe:", "anon_inode:")):
            kind = target.split("[")[0].rstrip(":") if target.startswith("pipe:") else target
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


# -- the aggregator process ------------------------------------------------------------------------


async def _serve(spec: dict[str, Any]) -> None:
    """Serve the aggregator over the given shards until stdin closes."""
    from aggregator.admission import Admission
    from aggregator.client import HttpShard, ShardClient, ShardClientConfig
    from aggregator.coordinator import Coordinator, CoordinatorConfig
    from aggregator.service import ServiceSettings, create_app, create_runner, create_site

    limits = LimitsConfig(**spec["limits"])
    deadline_ms = float(spec["deadline_ms"])
    shard_specs = spec["shards"]
    client_config = ShardClientConfig(
        max_connections_per_shard=limits.max_connections_per_shard,
        max_connections=max(1024, limits.max_connections_per_shard * len(shard_specs)),
        max_body_bytes=limits.max_reply_bytes,
    )
    async with ShardClient(client_config) as client:
        backends = [HttpShard(name, url, int(docs), client) for name, url, docs in shard_specs]
        coordinator = Coordinator(
            backends,
            config=CoordinatorConfig(
                default_deadline_ms=deadline_ms,
                max_inflight_per_shard=limits.max_inflight_per_shard,
            ),
        )
        admission = Admission(limits.admission())
        settings = ServiceSettings(
            default_deadline_ms=deadline_ms, max_body_bytes=limits.max_body_bytes
        )
        app = create_app(coordinator, admission=admission, settings=settings)

        async def debug(request: web.Request) -> web.Response:
            tasks = asyncio.all_tasks()
            kinds: dict[str, int] = {}
            for task in tasks:
                coro = task.get_coro()
                kind = getattr(coro, "__qualname__", type(coro).__name__)
                kinds[kind] = kinds.get(kind, 0) + 1
            counters: dict[str, Any] = {
                "tasks": len(tasks),
                "task_kinds": kinds,
                "lingering": coordinator.lingering_tasks,
                "shard_requests_in_flight": client.in_flight(),
                "admission_in_flight": admission.queue.in_flight,
                "admission_waiting": admission.queue.waiting,
            }
            return web.Response(body=orjson.dumps(counters), content_type="application/json")

        app.router.add_get("/debug/soak", debug)
        runner = create_runner(app, limits)
        await runner.setup()
        try:
            site = create_site(runner, "127.0.0.1", 0, limits)
            await site.start()
            port = int(runner.addresses[0][1])
            freeze_startup_heap()  # as the serve command does once start-up is done
            print(orjson.dumps({"url": f"http://127.0.0.1:{port}/search"}).decode(), flush=True)
            await wait_for_stdin_eof()
        finally:
            await runner.cleanup()
            await coordinator.aclose(timeout_s=1.0)


def _serve_main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.soak '<json>' (started by python -m bench soak)")
        return 2
    spec = orjson.loads(argv[0])
    run_loop(lambda: _serve(spec), str(spec.get("loop", "uvloop")))
    return 0


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
