"""The vectorised strategy model agrees with the real coordinator on virtual time."""

from __future__ import annotations

import asyncio
import statistics

import numpy as np
import pytest

from aggregator import Coordinator, CoordinatorConfig, NoShardAnswered, Query
from bench.model import simulate
from bench.virtual import run_virtual
from shards.latency import parse_latency, sample_array
from shards.sim import SimulatedShard

SPEC = "lognormal:median=10ms,sigma=0.5"
SHARDS = 20
QUERIES = 400
DEADLINE_MS = 25.0


async def _real(min_coverage: float | None) -> tuple[float, float, float]:
    """(mean coverage, partial share, median answer time in ms) from the real coordinator."""
    loop = asyncio.get_running_loop()
    shards = [
        SimulatedShard(f"s{i:02d}", 10, SPEC, seed=11, vary_by_call=True) for i in range(SHARDS)
    ]
    coordinator = Coordinator(shards, config=CoordinatorConfig(grace_fraction=0.1))
    coverages: list[float] = []
    times_ms: list[float] = []
    partial = 0
    for i in range(QUERIES):
        start = loop.time()
        try:
            response = await coordinator.search(
                Query(f"q{i}", deadline_ms=DEADLINE_MS, min_coverage=min_coverage)
            )
        except NoShardAnswered:
            coverages.append(0.0)
            partial += 1
        else:
            coverages.append(response.completeness.coverage)
            partial += response.partial
        times_ms.append((loop.time() - start) * 1000.0)
    return statistics.fmean(coverages), partial / QUERIES, statistics.median(times_ms)


@pytest.mark.parametrize(("strategy", "min_coverage"), [("deadline", None), ("good_enough", 0.8)])
def test_model_matches_the_coordinator(strategy: str, min_coverage: float | None) -> None:
    """Coverage, share of partial answers and median answer time agree within sampling noise."""
    real_coverage, real_partial, real_p50 = run_virtual(lambda: _real(min_coverage))
    (result,) = simulate(
        parse_latency(SPEC),
        shards=SHARDS,
        queries=20_000,
        strategies=(strategy,),
        deadline_ms=DEADLINE_MS,
        min_coverage=min_coverage or 0.9,
        grace_fraction=0.1,
        seed=5,
    )
    assert result.mean_coverage == pytest.approx(real_coverage, abs=0.02)
    assert result.partial_share == pytest.approx(real_partial, abs=0.08)
    assert result.latency_ms["p50"] == pytest.approx(real_p50, rel=0.1)


def test_wait_for_all_follows_the_tail_at_scale_arithmetic() -> None:
    """With 1% of calls at 1 s, 100 shards make 1 - 0.99^100 = 63% of queries slow."""
    spec = parse_latency("mixture:0.99*lognormal:median=10ms,sigma=0.3+0.01*constant:1s")
    (result,) = simulate(spec, shards=100, queries=20_000, strategies=("wait_all",), seed=3)
    assert result.latency_ms["p50"] == pytest.approx(1000.0)
    assert result.latency_ms["p90"] == pytest.approx(1000.0)
    assert result.mean_coverage == 1.0
    # p50 of a wait-for-all query is 1 s only if more than half are slow: 63.4% are.
    (fast,) = simulate(spec, shards=10, queries=20_000, strategies=("wait_all",), seed=3)
    assert fast.latency_ms["p50"] < 50.0  # 10 shards: only 9.6% of queries are slow


def test_hedging_cuts_the_tail_for_a_few_percent_more_requests() -> None:
    """Backups at the p95 remove the 1 s tail at about 5% extra requests."""
    spec = parse_latency("mixture:0.99*lognormal:median=10ms,sigma=0.3+0.01*constant:1s")
    wait, hedged = simulate(
        spec,
        shards=100,
        queries=5_000,
        strategies=("deadline", "hedged"),
        deadline_ms=2000.0,
        backups=2,
        seed=4,
    )
    assert wait.latency_ms["p99"] == pytest.approx(1000.0)
    assert hedged.latency_ms["p99.9"] < 100.0
    assert 4.0 < hedged.extra_requests_pct < 6.5


def test_vectorised_sampling_matches_the_scalar_distribution() -> None:
    """sample_array draws the same distribution as sample_s (median and p99)."""
    import random

    model = parse_latency("pareto:scale=2ms,alpha=1.5")
    many = sample_array(model, np.random.default_rng(0), 100_000)
    rng = random.Random(0)
    scalar = sorted(model.sample_s(rng) for _ in range(100_000))
    assert float(np.median(many)) == pytest.approx(scalar[50_000], rel=0.03)
    assert float(np.quantile(many, 0.99)) == pytest.approx(scalar[99_000], rel=0.1)


def test_bad_parameters_are_rejected() -> None:
    """Unknown strategies and out-of-range parameters raise ValueError."""
    model = parse_latency("constant:1ms")
    with pytest.raises(ValueError, match="unknown strategies"):
        simulate(model, shards=2, queries=2, strategies=("magic",))
    with pytest.raises(ValueError, match="shards and queries"):
        simulate(model, shards=0, queries=2)
