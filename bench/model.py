"""``python -m bench model``: the strategies as a vectorised model, for policy studies at scale.

The real coordinator costs microseconds per shard call, so 1,000 shards x 100,000 queries
(10^8 calls) is out of reach even in virtual time. This module models the same strategies
over a (queries x shards) matrix of simulated latencies with numpy, in blocks of queries, so
such a study takes seconds. ``tests/bench/test_model.py`` checks the model against the real
coordinator on virtual time at a scale both can run.

What is modelled, per query (each shard's calls independent, as with ``vary_by_call``):

* ``wait_all``: the answer comes when the slowest shard answers.
* ``deadline``: the answer comes at the slowest shard or the deadline, whichever is first;
  shards slower than the deadline are missing.
* ``hedged``: a shard not answered after the hedge delay gets a backup on another replica
  (up to ``backups`` of them, one per delay); the first answer counts. The hedge budget is
  not modelled: the share of extra requests is reported instead.
* ``good_enough``: once ``min_coverage`` of the shards answered, the rest get only
  ``grace_fraction`` of the remaining budget (shards hold equal numbers of documents).

Not modelled: queueing (shards are independent of load), the time the coordinator itself
takes, breakers and replica selection.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.wire import dump_json
from shards.latency import LatencyModel, parse_latency, sample_array

__all__ = ["ModelResult", "add_arguments", "run", "simulate"]

#: Queries simulated per block: bounds the memory to block x shards x 8 bytes per array.
_BLOCK_QUERIES_CELLS = 2_000_000
_STRATEGIES = ("wait_all", "deadline", "hedged", "good_enough")
_Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ModelResult:
    """What one strategy did over all simulated queries (latencies in milliseconds)."""

    strategy: str
    latency_ms: dict[str, float]
    mean_coverage: float
    partial_share: float
    failed_share: float
    extra_requests_pct: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {
            "strategy": self.strategy,
            "latency_ms": self.latency_ms,
            "mean_coverage": round(self.mean_coverage, 6),
            "partial_share": round(self.partial_share, 6),
            "failed_share": round(self.failed_share, 6),
            "extra_requests_pct": round(self.extra_requests_pct, 4),
        }


def _answer_times(
    strategy: str,
    primary: _Array,
    rng: np.random.Generator,
    model: LatencyModel,
    *,
    deadline_s: float,
    hedge_after_s: float,
    backups: int,
    min_coverage: float,
    grace_fraction: float,
) -> tuple[_Array, _Array, float]:
    """(when each query is answered, which shards made it, backup requests sent)."""
    shards = primary.shape[1]
    if strategy == "wait_all":
        return primary.max(axis=1), np.ones_like(primary, dtype=bool), 0.0
    effective = primary
    extra = 0.0
    if strategy == "hedged":
        # Backup j goes out at j x delay if nothing has answered by then (and the deadline has
        # not passed); the shard's answer is the first of all its copies.
        for j in range(1, backups + 1):
            sent_at_s = j * hedge_after_s
            pending = (effective > sent_at_s) & (sent_at_s < deadline_s)
            extra += float(pending.sum())
            backup = sent_at_s + sample_array(model, rng, primary.shape)
            effective = np.where(pending, np.minimum(effective, backup), effective)
    slowest = effective.max(axis=1)
    answer = np.minimum(slowest, deadline_s)
    if strategy == "good_enough":
        # The time the min_coverage-th shard answered; then a grace share of what remains.
        needed = max(1, math.ceil(min_coverage * shards))
        reached = np.partition(effective, needed - 1, axis=1)[:, needed - 1]
        cut = reached + grace_fraction * np.maximum(deadline_s - reached, 0.0)
        answer = np.minimum(answer, np.where(reached < deadline_s, cut, deadline_s))
    made_it = effective <= answer[:, None]
    return answer, made_it, extra


def simulate(
    model: LatencyModel,
    *,
    shards: int,
    queries: int,
    strategies: tuple[str, ...] = _STRATEGIES,
    deadline_ms: float = 50.0,
    hedge_after_ms: float | None = None,
    hedge_percentile: float = 95.0,
    backups: int = 1,
    min_coverage: float = 0.9,
    grace_fraction: float = 0.1,
    seed: int = 0,
) -> list[ModelResult]:
    """Model each strategy over ``queries`` queries of ``shards`` shards.

    The hedge delay is ``hedge_after_ms`` if given, else the model's ``hedge_percentile``
    (estimated from 10^6 draws). Every strategy sees the same primary latencies.
    """
    if shards < 1 or queries < 1:
        raise ValueError("shards and queries must be >= 1")
    if not 0 < min_coverage <= 1 or not 0 <= grace_fraction <= 1 or backups < 0:
        raise ValueError("min_coverage in (0, 1], grace_fraction in [0, 1], backups >= 0")
    unknown = set(strategies) - set(_STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {_STRATEGIES}")
    deadline_s = math.inf if strategies == ("wait_all",) else deadline_ms / 1000.0
    if hedge_after_ms is None:
        probe = sample_array(model, np.random.default_rng(seed + 1), 1_000_000)
        hedge_after_s = float(np.percentile(probe, hedge_percentile))
    else:
        hedge_after_s = hedge_after_ms / 1000.0
    block = max(1, _BLOCK_QUERIES_CELLS // shards)
    times: dict[str, list[_Array]] = {s: [] for s in strategies}
    coverage: dict[str, float] = dict.fromkeys(strategies, 0.0)
    partial: dict[str, int] = dict.fromkeys(strategies, 0)
    failed: dict[str, int] = dict.fromkeys(strategies, 0)
    extra: dict[str, float] = dict.fromkeys(strategies, 0.0)
    rng = np.random.default_rng(seed)
    done = 0
    while done < queries:
        n = min(block, queries - done)
        primary = sample_array(model, rng, (n, shards))
        for strategy in strategies:
            answer, made_it, sent = _answer_times(
                strategy,
                primary,
                rng,
                model,
                deadline_s=deadline_s,
                hedge_after_s=hedge_after_s,
                backups=backups,
                min_coverage=min_coverage,
                grace_fraction=grace_fraction,
            )
            answered = made_it.sum(axis=1)
            times[strategy].append(answer)
            coverage[strategy] += float(answered.sum()) / shards
            partial[strategy] += int((answered < shards).sum())
            failed[strategy] += int((answered == 0).sum())
            extra[strategy] += sent
        done += n
    results = []
    for strategy in strategies:
        all_ms = np.concatenate(times[strategy]) * 1000.0
        percentiles = np.percentile(all_ms, [50, 90, 99, 99.9])
        latency = {
            "p50": round(float(percentiles[0]), 3),
            "p90": round(float(percentiles[1]), 3),
            "p99": round(float(percentiles[2]), 3),
            "p99.9": round(float(percentiles[3]), 3),
            "max": round(float(all_ms.max()), 3),
        }
        results.append(
            ModelResult(
                strategy=strategy,
                latency_ms=latency,
                mean_coverage=coverage[strategy] / queries,
                partial_share=partial[strategy] / queries,
                failed_share=failed[strategy] / queries,
                extra_requests_pct=100.0 * extra[strategy] / (queries * shards),
            )
        )
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m bench model``."""
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument(
        "--latency",
        default="mixture:0.99*lognormal:median=10ms,sigma=0.3+0.01*constant:1s",
        help="latency spec of every shard's calls",
    )
    parser.add_argument("--deadline-ms", type=float, default=50.0)
    parser.add_argument("--hedge-after-ms", type=float, default=None)
    parser.add_argument("--hedge-percentile", type=float, default=95.0)
    parser.add_argument("--backups", type=int, default=1)
    parser.add_argument("--min-coverage", type=float, default=0.9)
    parser.add_argument("--grace-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the model and print each strategy's figures."""
    model = parse_latency(args.latency)
    started = time.perf_counter()
    results = simulate(
        model,
        shards=args.shards,
        queries=args.queries,
        deadline_ms=args.deadline_ms,
        hedge_after_ms=args.hedge_after_ms,
        hedge_percentile=args.hedge_percentile,
        backups=args.backups,
        min_coverage=args.min_coverage,
        grace_fraction=args.grace_fraction,
        seed=args.seed,
    )
    out = {
        "shards": args.shards,
        "queries": args.queries,
        "latency": model.spec,
        "deadline_ms": args.deadline_ms,
        "strategies": [r.as_dict() for r in results],
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if args.json:
        sys.stdout.write(dump_json(out).decode() + "\n")
        return 0
    print(f"{args.shards} shards x {args.queries} queries, {model.spec}: {out['wall_s']} s")
    for r in results:
        lat = r.latency_ms
        print(
            f"  {r.strategy:>11}: p50 {lat['p50']:8.2f}  p99 {lat['p99']:8.2f}  "
            f"p99.9 {lat['p99.9']:8.2f} ms  coverage {r.mean_coverage:.4f}  "
            f"partial {r.partial_share:.3f}  extra {r.extra_requests_pct:.2f}%"
        )
    return 0
