"""Tests of bench.report and bench.plots: figures of a run, the knee, markdown and PNGs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import LoadResult, LoadSpec, RequestResult, RequestStatus, run_load
from bench.plots import write_plots
from bench.report import cell_summary, find_knees, render_markdown, timeline
from bench.scenario import Cell, StrategyConfig
from bench.virtual import run_virtual

STRATEGY = StrategyConfig("deadline", "deadline", deadline_ms=50.0)


def _result(spec: LoadSpec, statuses: list[RequestResult], latency_s: float = 0.01) -> LoadResult:
    async def target(index: int) -> RequestResult:
        await asyncio.sleep(latency_s)
        return statuses[index % len(statuses)]

    async def main() -> LoadResult:
        return await run_load(target, spec, now_s=asyncio.get_running_loop().time)

    return run_virtual(main)


def _summary(rate: float = 100.0, latency_s: float = 0.01, **kw: Any) -> dict[str, Any]:
    spec = LoadSpec(rate_per_s=rate, duration_s=2, warmup_s=0.5, arrivals="constant")
    statuses = kw.get("statuses") or [RequestResult(RequestStatus.OK, coverage=1.0)]
    return cell_summary(Cell(STRATEGY, rate, 8), _result(spec, statuses, latency_s))


def test_cell_summary_counts_every_outcome() -> None:
    """Statuses, partial share, coverage percentiles and extra requests are all reported."""
    summary = _summary(
        statuses=[
            RequestResult(RequestStatus.OK, coverage=1.0),
            RequestResult(RequestStatus.PARTIAL, coverage=0.5, extra_requests=1),
            RequestResult(RequestStatus.ERROR, coverage=0.0, reason="no shard answered"),
            RequestResult(RequestStatus.SHED, reason="HTTP 503"),
        ]
    )
    r = summary["requests"]
    assert r["measured"] == 150
    assert r["ok"] + r["partial"] + r["error"] + r["shed"] == 150
    assert summary["partial_share"] == pytest.approx(0.5, abs=0.02)
    assert summary["failure_share"] == pytest.approx(0.5, abs=0.02)
    assert summary["coverage"]["min"] == 0.0
    assert summary["coverage"]["p50"] == 0.5
    assert summary["extra_requests"] == r["partial"]
    assert summary["reasons"] == {"no shard answered": r["error"], "HTTP 503": r["shed"]}
    assert summary["latency_ms"]["p50_ms"] == pytest.approx(10.0, abs=0.01)
    assert summary["latency_ms"]["count"] == 150
    assert summary["answered_ms"]["count"] == r["ok"] + r["partial"]
    assert summary["kept_rate"] is True


def test_timeline_windows_cover_the_run() -> None:
    """Latency over time has one window per half second of intended send time."""
    spec = LoadSpec(rate_per_s=100, duration_s=2, arrivals="constant")
    rows = timeline(_result(spec, [RequestResult(RequestStatus.OK, coverage=1.0)]))
    assert [row["t_s"] for row in rows] == [0.0, 0.5, 1.0, 1.5]
    assert sum(row["count"] for row in rows) == 200
    assert all(row["p99_ms"] == pytest.approx(10.0, abs=0.01) for row in rows)


def test_knee_is_the_last_rate_before_p99_doubles() -> None:
    """In a rate sweep, the knee is the highest rate whose p99 stays within twice the
    lowest rate's, and the reason names the first rate past it."""
    cells = [_summary(50, 0.010), _summary(100, 0.012), _summary(200, 0.030)]
    (knee,) = find_knees(cells)
    assert knee["highest_good_rate_per_s"] == 100
    assert "at 200/s" in knee["reason"]
    assert "p99" in knee["reason"]


def _results(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": {
            "name": "unit",
            "description": "a unit test",
            "load": {
                "rate_per_s": 100.0,
                "duration_s": 2.0,
                "warmup_s": 0.5,
                "arrivals": "constant",
                "max_inflight": 1000,
            },
            "cluster": {"shards": 8},
            "sweep": {"rate_per_s": [50.0, 100.0], "deadline_ms": [], "shards": []},
        },
        "mode": "virtual",
        "command": "python -m bench run unit.toml",
        "started_at": "2024-01-01T00:00:00+00:00",
        "elapsed_s": 1.0,
        "machine": {"cpus": 2, "python": "3.11", "loop": "virtual time"},
        "cells": cells,
        "knees": find_knees(cells),
    }


def test_markdown_and_plots(tmp_path: Path) -> None:
    """report.md holds the latency, completeness and generator tables; every plot is a PNG."""
    results = _results([_summary(50, 0.010), _summary(100, 0.011)])
    names = write_plots(results, tmp_path)
    assert names == ["spectrum.png", "coverage.png", "timeline.png", "load.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = render_markdown(results, names)
    assert "## Latency (ms, from intended send time)" in text
    assert "## Completeness, failures and extra load" in text
    assert "## The load generator" in text
    assert "## Knee of the offered-load sweep" in text
    assert "| deadline@50ms rate=100/s shards=8 |" in text
    assert "![load.png](load.png)" in text
