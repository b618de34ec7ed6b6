"""``python -m bench index``: our BM25 index against ``bm25s``, one query at a time, one core.

Both engines index the same SciFact corpus with the same tokens (our analyzer: case folding,
Lucene's English stop words, the Snowball English stemmer), score with the same formula
(Lucene's BM25, k1 = 0.9, b = 0.4) and answer the same queries (every query in
``queries.jsonl``, already analyzed, so only retrieval is timed), top 10 each. The process is
pinned to one CPU. Rounds alternate between the engines so drifts in machine load hit both
alike; each engine's figure is its median round. ``ratio_vs_bm25s`` is our queries/s over the
faster of bm25s's two query paths (its ``retrieve`` API and its raw ``get_scores`` plus a
numpy top-k), so the comparison is against bm25s at its best.

Also reported, with the index split into 8 shards: per-shard query latency p50/p99 for the
scoring alone, and for a full ``IndexShard.search`` through the thread pool and through a
process pool on an event loop (the measurement behind :mod:`shards.index.pool`'s choice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aggregator import Deadline, Query
from aggregator._cli import LOOP_CHOICES, run_loop
from bench.quality import default_corpus_dir
from shards.index import (
    Analyzer,
    BM25Params,
    IndexShard,
    ProcessScoringPool,
    ThreadScoringPool,
    build_index,
    open_index,
)

__all__ = ["add_arguments", "run"]

_K = 10


def _pin_to_one_cpu() -> int | None:
    """Pin this process to one CPU where the OS allows it; returns the CPU or ``None``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return cpus[-1]


def _load_corpus(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                title, text = obj.get("title") or "", obj.get("text") or ""
                ids.append(str(obj.get("_id", obj.get("id"))))
                texts.append(f"{title}\n{text}" if title else text)
    return ids, texts


def _load_queries(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [str(json.loads(line)["text"]) for line in fh if line.strip()]


def _rounds(
    engines: dict[str, Callable[[], None]], n_queries: int, rounds: int
) -> dict[str, float]:
    """Median queries/s of each engine over ``rounds`` alternating rounds."""
    qps: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, one_round in engines.items():
            started = time.perf_counter()
            one_round()
            qps[name].append(n_queries / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in qps.items()}


def _percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    array = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(array, 50)), 4),
        "p99_ms": round(float(np.percentile(array, 99)), 4),
        "samples": len(array),
    }


async def _async_latencies(shards: list[IndexShard], queries: Sequence[str]) -> list[float]:
    """Each shard's ``search`` latency, one call at a time (no queueing behind other calls)."""
    loop = asyncio.get_running_loop()
    samples = []
    for text in queries:
        query = Query(text, k=_K)
        for shard in shards:
            started = time.perf_counter()
            await shard.search(query, Deadline.after(loop.time(), 1000.0))
            samples.append(time.perf_counter() - started)
    return samples


def measure(corpus_dir: Path, rounds: int, loop: str, with_process_pool: bool) -> dict[str, Any]:
    """Build both engines, time them, and return the JSON report."""
    import bm25s

    cpu = _pin_to_one_cpu()
    params = BM25Params()
    analyzer = Analyzer()
    doc_ids, texts = _load_corpus(corpus_dir / "corpus.jsonl")
    query_texts = _load_queries(corpus_dir / "queries.jsonl")
    query_terms = [analyzer.terms(q) for q in query_texts]

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        started = time.perf_counter()
        build_index(corpus_dir / "corpus.jsonl", Path(tmp) / "one", 1, bm25=params)
        ours_build_s = time.perf_counter() - started
        build_index(corpus_dir / "corpus.jsonl", Path(tmp) / "eight", 8, bm25=params)
        (single,) = open_index(Path(tmp) / "one")
        thread_pool = ThreadScoringPool(max_workers=1)
        eight = open_index(Path(tmp) / "eight", pool=thread_pool)
        process_pool = ProcessScoringPool(max_workers=1) if with_process_pool else None
        eight_proc = (
            open_index(Path(tmp) / "eight", pool=process_pool) if process_pool is not None else []
        )

        started = time.perf_counter()
        corpus_terms = [analyzer.terms(t) for t in texts]
        retriever = bm25s.BM25(k1=params.k1, b=params.b, method="lucene")
        retriever.index(corpus_terms, show_progress=False)
        bm25s_build_s = time.perf_counter() - started  # includes analysis, as ours does

        def ours() -> None:
            for terms in query_terms:
                single.search_terms(terms, _K)

        def bm25s_retrieve() -> None:
            for terms in query_terms:
                retriever.retrieve([terms], k=_K, n_threads=1, show_progress=False)

        def bm25s_scores() -> None:
            for terms in query_terms:
                scores = retriever.get_scores(terms) if terms else np.zeros(len(doc_ids))
                top = np.argpartition(-scores, _K)[:_K]
                top[np.argsort(-scores[top])]

        ours()  # warm caches and page in the arrays before timing anything
        bm25s_retrieve()
        qps = _rounds(
            {"ours": ours, "bm25s_retrieve": bm25s_retrieve, "bm25s_scores": bm25s_scores},
            len(query_terms),
            rounds,
        )

        # Same answers? Compare top-10 id sets (ties may order differently across engines).
        agree = 0
        for terms in query_terms:
            mine = {h.doc_id for h in single.search_terms(terms, _K)}
            if not terms:
                agree += 1
                continue
            docs, scores = retriever.retrieve([terms], k=_K, n_threads=1, show_progress=False)
            # bm25s always returns k documents; ours only those that match a term.
            theirs = {doc_ids[int(i)] for i, s in zip(docs[0], scores[0], strict=True) if s > 0}
            agree += mine == theirs

        compute = []
        for terms in query_terms:
            for shard in eight:
                started = time.perf_counter()
                shard.search_terms(terms, _K)
                compute.append(time.perf_counter() - started)

        async def pooled() -> tuple[list[float], list[float]]:
            threaded = await _async_latencies(eight, query_texts)
            processed: list[float] = []
            if eight_proc:
                await _async_latencies(eight_proc, query_texts[:20])  # start and load workers
                processed = await _async_latencies(eight_proc, query_texts)
            return threaded, processed

        threaded, processed = run_loop(pooled, loop)
        thread_pool.shutdown()
        if process_pool is not None:
            process_pool.shutdown()

    best_bm25s = max(qps["bm25s_retrieve"], qps["bm25s_scores"])
    report: dict[str, Any] = {
        "corpus": str(corpus_dir / "corpus.jsonl"),
        "docs": len(doc_ids),
        "queries": len(query_terms),
        "k": _K,
        "k1": params.k1,
        "b": params.b,
        "pinned_cpu": cpu,
        "rounds": rounds,
        "ours_qps": round(qps["ours"], 1),
        "bm25s_qps": round(best_bm25s, 1),
        "bm25s_retrieve_qps": round(qps["bm25s_retrieve"], 1),
        "bm25s_get_scores_qps": round(qps["bm25s_scores"], 1),
        "ratio_vs_bm25s": round(qps["ours"] / best_bm25s, 3),
        "top10_same_docs_fraction": round(agree / max(1, len(query_terms)), 4),
        "ours_build_s": round(ours_build_s, 2),
        "bm25s_build_s": round(bm25s_build_s, 2),
        "shards": 8,
        "per_shard_scoring": _percentiles_ms(compute),
        "per_shard_search_thread_pool": _percentiles_ms(threaded),
    }
    if processed:
        report["per_shard_search_process_pool"] = _percentiles_ms(processed)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m bench index``."""
    parser.add_argument(
        "--corpus",
        type=Path,
        default=default_corpus_dir(),
        help="BEIR collection directory; default: ../shared/data/scifact next to the repository",
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument(
        "--no-process-pool", action="store_true", help="skip the process-pool latency figures"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark. A missing collection is skipped with a message (status 0)."""
    root: Path = args.corpus
    if not (root / "corpus.jsonl").is_file() or not (root / "queries.jsonl").is_file():
        print(
            f"bench index: skipped: no BEIR collection at {root} (expected corpus.jsonl and "
            "queries.jsonl); pass --corpus DIR",
            file=sys.stderr,
        )
        return 0
    if not 1 <= args.rounds <= 100:
        raise ValueError(f"--rounds must be in 1..100, got {args.rounds}")
    try:
        import bm25s  # noqa: F401
    except ImportError as exc:
        raise ValueError("bm25s is not installed: pip install 'fanout-aggregator[bench]'") from exc
    report = measure(root, args.rounds, args.loop, not args.no_process_pool)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['queries']} queries, {report['docs']} documents, top {report['k']}, one core\n"
        f"  ours   {report['ours_qps']:>9.1f} queries/s\n"
        f"  bm25s  {report['bm25s_qps']:>9.1f} queries/s (retrieve "
        f"{report['bm25s_retrieve_qps']:.1f}, get_scores+top-k "
        f"{report['bm25s_get_scores_qps']:.1f})\n"
        f"  ratio_vs_bm25s {report['ratio_vs_bm25s']:.3f}; same top-10 documents on "
        f"{report['top10_same_docs_fraction']:.1%} of queries"
    )
    keys = ("per_shard_scoring", "per_shard_search_thread_pool", "per_shard_search_process_pool")
    for key in keys:
        if key in report:
            row = report[key]
            print(f"  {key} (8 shards): p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms")
    return 0
