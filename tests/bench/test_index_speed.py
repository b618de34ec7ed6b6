"""bench index: the report's shape on a tiny collection, and a clean skip without data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from bench import index_speed
from tests.bench.test_quality import write_collection


def test_measure_reports_both_engines_and_shard_latencies(tmp_path: Path) -> None:
    """Queries/s of both engines, their ratio, agreement, and per-shard percentiles."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        report = index_speed.measure(write_collection(tmp_path / "c"), 1, "asyncio", False)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)  # measure() pins the process to one CPU
    assert report["ours_qps"] > 0
    assert report["bm25s_qps"] > 0
    assert report["ratio_vs_bm25s"] == pytest.approx(
        report["ours_qps"] / report["bm25s_qps"], rel=0.01
    )
    assert report["top10_same_docs_fraction"] == 1.0
    for key in ("per_shard_scoring", "per_shard_search_thread_pool"):
        assert report[key]["p50_ms"] <= report[key]["p99_ms"]


def test_a_missing_collection_is_skipped_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No corpus at --corpus: exit status 0 and one line saying why."""
    parser = argparse.ArgumentParser()
    index_speed.add_arguments(parser)
    assert index_speed.run(parser.parse_args(["--corpus", str(tmp_path)])) == 0
    assert "skipped: no BEIR collection" in capsys.readouterr().err
