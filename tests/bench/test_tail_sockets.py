"""``bench tail-sockets``: queries are split into phases by intended send time; settings."""

from __future__ import annotations

import numpy as np
import pytest

from bench.histogram import LatencyHistogram
from bench.loadgen import LoadResult, LoadSpec, RequestStatus
from bench.tail_sockets import BenchConfig, phase_summaries


def _result(offsets_s: list[float], latencies_s: list[float], statuses: list[int]) -> LoadResult:
    n = len(offsets_s)
    return LoadResult(
        spec=LoadSpec(rate_per_s=1.0, duration_s=10.0),
        latency=LatencyHistogram(),
        service=LatencyHistogram(),
        lag=LatencyHistogram(),
        answered=LatencyHistogram(),
        offsets_s=np.array(offsets_s),
        latency_s=np.array(latencies_s),
        status=np.array(statuses, dtype=np.int8),
        coverage=np.full(n, np.nan),
        server_ms=np.full(n, np.nan),
        service_s=np.full(n, np.nan),
    )


def test_phases_split_queries_by_intended_send_time() -> None:
    """Each query lands in the phase its intended send time falls in; the last phase runs
    to the end; counts, slow queries and failures are per phase."""
    ok, err = int(RequestStatus.OK), int(RequestStatus.ERROR)
    result = _result(
        [0.0, 1.0, 2.5, 3.0, 9.0], [0.01, 0.02, 0.5, 0.03, 0.04], [ok, ok, ok, err, ok]
    )
    phases = phase_summaries(result, 100.0, {"before": 100.0, "during": 102.0, "after": 103.0})
    assert [phases[p]["count"] for p in ("before", "during", "after")] == [2, 1, 2]
    assert phases["before"]["max_ms"] == pytest.approx(20.0, rel=1e-3)
    assert (phases["during"]["slow_queries"], phases["during"]["not_ok"]) == (1, 0)
    assert (phases["after"]["slow_queries"], phases["after"]["not_ok"]) == (0, 1)


def test_settings_compare_hedging_on_and_off_for_both_selections() -> None:
    """Hedging is the only difference within each selection policy."""
    settings = BenchConfig().settings()
    assert settings["round_robin"].hedging is False
    assert settings["round_robin_hedged"].hedge_percentile == 95.0
    assert settings["round_robin_hedged"].selection == "round_robin"
    assert settings["p2c"].hedging is False
    assert settings["p2c_hedged"].selection == "p2c"
