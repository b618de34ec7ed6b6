"""``python -m bench quality``: is the merged, partial answer the *right* answer?

On a BEIR collection (SciFact by default: 5,183 abstracts, 300 test claims with relevance
judgments) this builds a one-shard index and an N-shard index of the same corpus and runs
every test query through the real :class:`aggregator.Coordinator`:

(a) one index; (b) N shards merged by the coordinator with no deadline pressure; and
(c) N shards under deadlines that cut coverage to about 90 %, 75 % and 50 %: each shard is
wrapped in :class:`shards.sim.Delayed` with latency ``uniform:min=0ms,max=100ms`` (seeded per
shard and query) and the query's deadline is ``coverage * 100 ms``, so each shard answers in
time with probability ``coverage``. Part (c) runs in virtual time (:mod:`bench.virtual`) with
scoring done inline, so the cut depends on the latency model alone, never on machine noise.

Reported: nDCG@10 and Recall@100 (BEIR's definitions: linear gains, judged documents only),
the share of queries whose top 10 is the same, in the same order, in (a) and (b), and one row
per coverage target with the coverage actually measured by the coordinator.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator import (
    Coordinator,
    CoordinatorConfig,
    Deadline,
    NoShardAnswered,
    Query,
    ShardReply,
)
from aggregator._cli import LOOP_CHOICES, run_loop
from bench.virtual import run_virtual
from shards.index import BM25Params, IndexShard, build_index, open_index

__all__ = [
    "COVERAGE_TARGETS",
    "Collection",
    "add_arguments",
    "default_corpus_dir",
    "load_collection",
    "ndcg_at",
    "recall_at",
    "run",
]

#: Coverage targets of part (c).
COVERAGE_TARGETS = (0.9, 0.75, 0.5)
#: The latency every shard draws from in part (c); the deadline is a fraction of its maximum.
CUT_LATENCY = "uniform:min=0ms,max=100ms"
CUT_LATENCY_MAX_MS = 100.0
#: Hits asked of the coordinator (Recall@100 needs 100).
DEPTH = 100


def default_corpus_dir() -> Path:
    """``../shared/data/scifact`` next to the repository (where the team keeps data sets)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact"


@dataclass(frozen=True, slots=True)
class Collection:
    """A BEIR collection: the corpus file, test queries by id, and relevance judgments."""

    corpus: Path
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]


def load_collection(root: Path, split: str = "test") -> Collection:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv`` under ``root``.

    Only queries with at least one positive judgment are kept. Raises
    :class:`FileNotFoundError` when a file is missing and :class:`ValueError` when one is
    malformed.
    """
    corpus = root / "corpus.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (corpus, root / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in enumerate(qrels_path.read_text("utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if (line_no == 1 and parts[0] == "query-id") or not line.strip():
            continue
        if len(parts) != 3:
            raise ValueError(f"{qrels_path}: line {line_no}: expected 3 tab-separated fields")
        qid, doc_id, rel = parts
        if int(rel) > 0:
            qrels.setdefault(qid, {})[doc_id] = int(rel)
    queries: dict[str, str] = {}
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                if str(obj["_id"]) in qrels:
                    queries[str(obj["_id"])] = str(obj["text"])
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no text, e.g. {min(missing)!r}")
    return Collection(corpus, dict(sorted(queries.items())), qrels)


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (``rel / log2(rank + 1)``), as BEIR and trec_eval compute it."""
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the first ``k``."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant.keys()) / len(relevant)


class _InlineShard:
    """An index shard scored on the loop itself: for virtual time, where CPU time is free."""

    __slots__ = ("_shard",)

    def __init__(self, shard: IndexShard) -> None:
        self._shard = shard

    @property
    def name(self) -> str:
        return self._shard.name

    @property
    def doc_count(self) -> int:
        return self._shard.doc_count

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        hits = self._shard.search_terms(self._shard.analyze(query.text), query.k)
        return ShardReply(self.name, self.doc_count, tuple(hits))


@dataclass(frozen=True, slots=True)
class _Run:
    rankings: dict[str, list[str]]
    coverage: float

    def ndcg10(self, qrels: Mapping[str, Mapping[str, int]]) -> float:
        return _mean(ndcg_at(self.rankings[q], qrels[q], 10) for q in self.rankings)

    def recall100(self, qrels: Mapping[str, Mapping[str, int]]) -> float:
        return _mean(recall_at(self.rankings[q], qrels[q], 100) for q in self.rankings)


def _mean(values: Any) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


async def _run_queries(
    coordinator: Coordinator, queries: Mapping[str, str], deadline_ms: float | None
) -> _Run:
    rankings: dict[str, list[str]] = {}
    coverage = 0.0
    for qid, text in queries.items():
        try:
            response = await coordinator.search(Query(text, k=DEPTH, deadline_ms=deadline_ms))
        except NoShardAnswered:  # every shard was cut: an empty answer, zero coverage
            rankings[qid] = []
            continue
        rankings[qid] = [h.doc_id for h in response.hits]
        coverage += response.completeness.coverage
    return _Run(rankings, coverage / max(1, len(queries)))


def _coverage_run(shards: list[IndexShard], queries: Mapping[str, str], target: float) -> _Run:
    from shards.sim import Delayed

    backends = [Delayed(_InlineShard(s), CUT_LATENCY, seed=7) for s in shards]
    config = CoordinatorConfig(default_deadline_ms=None)

    async def main() -> _Run:
        coordinator = Coordinator(backends, config=config)
        return await _run_queries(coordinator, queries, target * CUT_LATENCY_MAX_MS)

    return run_virtual(main)


def measure(collection: Collection, n_shards: int, params: BM25Params, loop: str) -> dict[str, Any]:
    """Run parts (a), (b) and (c); returns the JSON report."""
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        started = time.perf_counter()
        build_index(collection.corpus, Path(tmp) / "single", 1, bm25=params, progress=False)
        build_single_s = time.perf_counter() - started
        started = time.perf_counter()
        build_index(collection.corpus, Path(tmp) / "sharded", n_shards, bm25=params)
        build_sharded_s = time.perf_counter() - started
        single = open_index(Path(tmp) / "single")
        sharded = open_index(Path(tmp) / "sharded")
    config = CoordinatorConfig(default_deadline_ms=None)

    async def unpressured() -> tuple[_Run, _Run]:
        one = await _run_queries(Coordinator(single, config=config), collection.queries, None)
        many = await _run_queries(Coordinator(sharded, config=config), collection.queries, None)
        return one, many

    run_single, run_sharded = run_loop(unpressured, loop)
    qrels = collection.qrels
    identical = sum(
        run_single.rankings[q][:10] == run_sharded.rankings[q][:10] for q in collection.queries
    )
    by_coverage = []
    for target in COVERAGE_TARGETS:
        cut = _coverage_run(sharded, collection.queries, target)
        by_coverage.append(
            {
                "target": target,
                "deadline_ms": target * CUT_LATENCY_MAX_MS,
                "coverage": round(cut.coverage, 4),
                "ndcg10": round(cut.ndcg10(qrels), 4),
                "recall100": round(cut.recall100(qrels), 4),
            }
        )
    return {
        "corpus": str(collection.corpus),
        "docs": sum(s.doc_count for s in single),
        "queries": len(collection.queries),
        "shards": n_shards,
        "k1": params.k1,
        "b": params.b,
        "build_single_s": round(build_single_s, 2),
        "build_sharded_s": round(build_sharded_s, 2),
        "ndcg10_single": round(run_single.ndcg10(qrels), 4),
        "recall100_single": round(run_single.recall100(qrels), 4),
        "ndcg10_sharded": round(run_sharded.ndcg10(qrels), 4),
        "recall100_sharded": round(run_sharded.recall100(qrels), 4),
        "identical_top10_fraction": round(identical / max(1, len(collection.queries)), 4),
        "cut_latency": CUT_LATENCY,
        "by_coverage": by_coverage,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench quality``."""
    parser.add_argument(
        "--corpus",
        type=Path,
        default=default_corpus_dir(),
        help="BEIR collection directory (corpus.jsonl, queries.jsonl, qrels/test.tsv); "
        "default: ../shared/data/scifact next to the repository",
    )
    parser.add_argument("--shards", type=int, default=8, help="shards of the sharded index")
    parser.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9)")
    parser.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; prints a table or JSON. A missing collection is skipped (status 0)."""
    root: Path = args.corpus
    if not (root / "corpus.jsonl").is_file():
        print(
            f"bench quality: skipped: no BEIR collection at {root} (expected corpus.jsonl, "
            "queries.jsonl, qrels/test.tsv); pass --corpus DIR",
            file=sys.stderr,
        )
        return 0
    if not 1 <= args.shards <= 1024:
        raise ValueError(f"--shards must be in 1..1024, got {args.shards}")
    report = measure(load_collection(root), args.shards, BM25Params(args.k1, args.b), args.loop)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _print_table(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report['queries']} queries, {report['docs']} documents, "
        f"BM25 k1={report['k1']} b={report['b']}"
    )
    for column in ("run", "coverage", "nDCG@10", "Recall@100"):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row(
        "(a) one index", "1.0000", f"{report['ndcg10_single']:.4f}",
        f"{report['recall100_single']:.4f}",
    )  # fmt: skip
    table.add_row(
        f"(b) {report['shards']} shards merged", "1.0000", f"{report['ndcg10_sharded']:.4f}",
        f"{report['recall100_sharded']:.4f}",
    )  # fmt: skip
    for row in report["by_coverage"]:
        table.add_row(
            f"(c) deadline {row['deadline_ms']:g} ms", f"{row['coverage']:.4f}",
            f"{row['ndcg10']:.4f}", f"{row['recall100']:.4f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(
        f"identical top 10 (same order) in (a) and (b): "
        f"{report['identical_top10_fraction']:.2%} of queries"
    )
