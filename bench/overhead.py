"""``python -m bench overhead``: what the coordinator costs, and how well its deadline holds.

Two measurements, in process, on one event loop (uvloop unless ``--loop asyncio``):

1. Throughput. 16 shards that answer at once (a precomputed reply, no scoring, so the
   figure is the coordinator's own cost and nothing else). Queries run one after another
   through (a) the real :class:`aggregator.Coordinator` and (b) a bare skeleton: one task per
   shard, ``asyncio.wait``, ``heapq.nlargest``. Short rounds alternate between the two so
   drifts in machine load hit both alike; ``ratio`` is the median over rounds of coordinator
   queries/s over skeleton queries/s.
2. Deadline overrun. 16 simulated shards of which 2 hang, a 50 ms deadline, open-loop
   arrivals at a constant rate (default 200 queries/s for 10 s). Reported: percentiles of
   (response time - deadline) from the moment each query entered the coordinator, the same
   from its *intended* start (which adds the generator's own wake-up lateness, reported as
   ``send_lag``), and the tasks left alive afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import statistics
import sys
import time
from typing import Any

from hdrh.histogram import HdrHistogram

from aggregator import Coordinator, Deadline, Hit, Query, ShardReply
from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.wire import dump_json
from shards.sim import simulated_cluster

__all__ = ["add_arguments", "run"]

_SHARDS = 16
_K = 10


class _InstantShard:
    """Answers at once with a fixed top-k: about the cheapest backend there can be.

    It builds a reply per call, as every real backend does, from hits made once.
    """

    __slots__ = ("_hits", "doc_count", "name")

    def __init__(self, index: int) -> None:
        self.name = f"shard-{index:02d}"
        self.doc_count = 1000
        self._hits = tuple(
            Hit(f"{self.name}-{j}", 1.0 / (1 + index + j), self.name) for j in range(_K)
        )

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        return ShardReply(self.name, self.doc_count, self._hits)


async def _skeleton(shards: list[_InstantShard], query: Query, timeout_s: float) -> list[Hit]:
    """What a user would write by hand: gather with a timeout, keep the best k."""
    loop = asyncio.get_running_loop()
    deadline = Deadline.after(loop.time(), query.deadline_ms)
    tasks = [asyncio.create_task(s.search(query, deadline)) for s in shards]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    hits = [h for t in done if t.exception() is None for h in t.result().hits]
    return heapq.nlargest(query.k, hits, key=lambda h: h.score)


async def _throughput(rounds: int, queries_per_round: int) -> dict[str, Any]:
    shards = [_InstantShard(i) for i in range(_SHARDS)]
    coordinator = Coordinator(shards)
    queries = [Query(f"q{i}", k=_K, deadline_ms=1000) for i in range(queries_per_round)]
    coord_qps: list[float] = []
    skel_qps: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for q in queries:
            await coordinator.search(q)
        coord_qps.append(len(queries) / (time.perf_counter() - start))
        start = time.perf_counter()
        for q in queries:
            await _skeleton(shards, q, 1.0)
        skel_qps.append(len(queries) / (time.perf_counter() - start))
    coordinator_qps = statistics.median(coord_qps)
    skeleton_qps = statistics.median(skel_qps)
    # Each round pairs the two back to back, so the median of the per-round ratios cancels
    # most of the drift in machine load that the medians of each side would keep.
    ratio = statistics.median(c / k for c, k in zip(coord_qps, skel_qps, strict=True))
    return {
        "coordinator_qps": round(coordinator_qps, 1),
        "skeleton_qps": round(skeleton_qps, 1),
        "ratio": round(ratio, 3),
        "rounds": rounds,
        "queries_per_round": queries_per_round,
    }


async def _overrun(rate_qps: float, duration_s: float, deadline_ms: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    shards = simulated_cluster(
        _SHARDS,
        "lognormal:median=2ms,sigma=0.5",
        seed=7,
        slow={3: "hang=1", 11: "hang=1"},
    )
    coordinator = Coordinator(shards)
    # Microseconds. `overrun` runs from the moment the query entered the coordinator (what the
    # deadline promises); `overrun_intended` from its intended send time, so it also carries
    # the generator's own lateness, reported apart as `send_lag`.
    overrun = HdrHistogram(1, 60_000_000, 3)
    overrun_intended = HdrHistogram(1, 60_000_000, 3)
    send_lag = HdrHistogram(1, 60_000_000, 3)
    # How long before the deadline the early answers came: the budget the coordinator gave
    # up to land by the deadline (it stops waiting one timer tick early on uvloop).
    early_by = HdrHistogram(1, 60_000_000, 3)
    early = 0
    errors = 0
    tasks_before = len(asyncio.all_tasks())
    in_flight: set[asyncio.Task[None]] = set()
    n_queries = int(rate_qps * duration_s)
    interval_s = 1.0 / rate_qps

    async def one(i: int, intended_s: float) -> None:
        nonlocal early, errors
        started_s = time.perf_counter()
        send_lag.record_value(max(1, int((started_s - intended_s) * 1e6)))
        try:
            await coordinator.search(Query(f"q{i}", deadline_ms=deadline_ms))
        except Exception:
            errors += 1
            return
        done_s = time.perf_counter()
        over_us = (done_s - started_s - deadline_ms / 1000) * 1e6
        if over_us < 0:
            early += 1
            early_by.record_value(max(1, int(-over_us)))
        overrun.record_value(max(1, int(over_us)))
        over_intended_us = (done_s - intended_s - deadline_ms / 1000) * 1e6
        overrun_intended.record_value(max(1, int(over_intended_us)))

    start = time.perf_counter() + 0.05
    for i in range(n_queries):
        intended = start + i * interval_s
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # Open loop: every query is its own task; none waits for an earlier one. The set
        # keeps references (bounded by rate x deadline, about 10 at the defaults).
        task = loop.create_task(one(i, intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    while in_flight:
        await asyncio.wait(set(in_flight))
    lingering = await coordinator.aclose(timeout_s=1.0)
    await asyncio.sleep(0)
    leaked = len(asyncio.all_tasks()) - tasks_before

    def ms(h: HdrHistogram, percentile: float) -> float:
        return float(h.get_value_at_percentile(percentile)) / 1000

    return {
        "queries": n_queries,
        "rate_qps": rate_qps,
        "deadline_ms": deadline_ms,
        "overrun_p50_ms": ms(overrun, 50),
        "overrun_p99_ms": ms(overrun, 99),
        "overrun_p999_ms": ms(overrun, 99.9),
        "overrun_max_ms": overrun.get_max_value() / 1000,
        "overrun_from_intended_p99_ms": ms(overrun_intended, 99),
        "overrun_from_intended_p999_ms": ms(overrun_intended, 99.9),
        "send_lag_p50_ms": ms(send_lag, 50),
        "send_lag_p99_ms": ms(send_lag, 99),
        "answered_before_deadline": early,
        "early_by_p50_ms": ms(early_by, 50),
        "early_by_max_ms": early_by.get_max_value() / 1000,
        "errors": errors,
        "lingering_after": lingering,
        "leaked_tasks": leaked,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m bench overhead``."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default="uvloop")
    parser.add_argument("--rounds", type=int, default=21, help="alternating throughput rounds")
    parser.add_argument("--queries", type=int, default=500, help="queries per round")
    parser.add_argument("--rate", type=float, default=200.0, help="overrun run: queries/s")
    parser.add_argument("--duration-s", type=float, default=10.0, help="overrun run length")
    parser.add_argument("--deadline-ms", type=float, default=50.0)


def run(args: argparse.Namespace) -> int:
    """Run both measurements and print them."""
    if args.rounds < 1 or args.queries < 1 or args.rate <= 0 or args.duration_s <= 0:
        raise ValueError("--rounds, --queries, --rate and --duration-s must be positive")

    async def main() -> dict[str, Any]:
        result: dict[str, Any] = {"loop": args.loop, "shards": _SHARDS}
        result.update(await _throughput(args.rounds, args.queries))
        # As a server does once it has started: the long-lived heap built so far is moved out
        # of the collector's reach, so a full collection no longer stalls the loop for tens of
        # milliseconds (see aggregator/_runtime.py).
        freeze_startup_heap()
        result.update(await _overrun(args.rate, args.duration_s, args.deadline_ms))
        return result

    result = run_loop(main, args.loop)
    targets = {
        "ratio_ok": result["ratio"] >= 0.6,
        "overrun_p99_ok": result["overrun_p99_ms"] <= 2.0,
        "overrun_p999_ok": result["overrun_p999_ms"] <= 5.0,
        "no_leaks": result["leaked_tasks"] == 0,
    }
    result["targets"] = targets
    if args.json:
        sys.stdout.write(dump_json(result).decode() + "\n")
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0
