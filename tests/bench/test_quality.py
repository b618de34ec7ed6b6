"""bench quality: metrics by hand, a tiny collection end to end, a clean skip without data."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench import quality
from bench.quality import load_collection, measure, ndcg_at, recall_at
from shards.index import BM25Params


def write_collection(root: Path) -> Path:
    """A BEIR-layout collection of 12 documents and 3 judged queries."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    topics = ["cat", "dog", "fish", "bird"]
    docs = [
        {"_id": f"d{i}", "title": f"{t} note", "text": f"{t} " * (1 + i % 3)}
        for i, t in enumerate(topics * 3)
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "q1", "text": "cat"}, {"_id": "q2", "text": "dog fish"},
               {"_id": "q3", "text": "bird"}, {"_id": "q4", "text": "unjudged"}]  # fmt: skip
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\nq2\td2\t2\nq3\td3\t1\nq3\td7\t0\n"
    )
    return root


def test_ndcg_and_recall_match_hand_computations() -> None:
    """nDCG@k uses linear gains over log2(rank + 1); recall counts judged hits."""
    relevant = {"a": 1, "b": 2}
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(["b", "a"], relevant, 10) == pytest.approx(1.0)
    assert ndcg_at(["x", "a"], relevant, 10) == pytest.approx((1 / math.log2(3)) / ideal)
    assert ndcg_at(["x", "a"], relevant, 1) == 0.0
    assert recall_at(["a", "x", "b"], relevant, 2) == 0.5
    assert recall_at([], {}, 10) == 0.0


def test_collection_reader_keeps_only_judged_queries(tmp_path: Path) -> None:
    """Queries without a positive judgment are left out; zero-score judgments ignored."""
    collection = load_collection(write_collection(tmp_path / "c"))
    assert list(collection.queries) == ["q1", "q2", "q3"]
    assert collection.qrels["q3"] == {"d3": 1}


def test_measure_reports_every_figure_on_a_tiny_collection(tmp_path: Path) -> None:
    """The JSON report holds the issue's keys; sharded equals single; three coverage rows."""
    report = measure(load_collection(write_collection(tmp_path / "c")), 3, BM25Params(), "asyncio")
    for key in ("ndcg10_single", "ndcg10_sharded", "recall100_sharded", "identical_top10_fraction"):
        assert 0.0 <= report[key] <= 1.0
    assert report["identical_top10_fraction"] == 1.0
    assert report["ndcg10_single"] == report["ndcg10_sharded"]
    assert [row["target"] for row in report["by_coverage"]] == [0.9, 0.75, 0.5]
    for row in report["by_coverage"]:
        assert set(row) >= {"coverage", "ndcg10"}
        assert 0.0 <= row["coverage"] <= 1.0


def test_a_missing_collection_is_skipped_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No corpus at --corpus: exit status 0 and one line saying why and what to pass."""
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    args = parser.parse_args(["--corpus", str(tmp_path / "absent")])
    assert quality.run(args) == 0
    assert "skipped: no BEIR collection" in capsys.readouterr().err
