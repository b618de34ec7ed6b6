"""On real data (BEIR SciFact, when present): sharded answers equal single-index answers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from aggregator.merge import merge_top_k
from bench.quality import default_corpus_dir, load_collection
from shards.index import build_index, open_index

SCIFACT = default_corpus_dir()

pytestmark = pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").is_file(), reason=f"SciFact not found at {SCIFACT}"
)


def test_scifact_loads_with_its_300_judged_test_queries() -> None:
    """The collection reader finds every judged test query and its judgments."""
    collection = load_collection(SCIFACT)
    assert len(collection.queries) == 300
    assert sum(len(r) for r in collection.qrels.values()) == 339


def test_sharded_top10_equals_single_index_top10_on_a_scifact_slice(tmp_path: Path) -> None:
    """800 SciFact abstracts in 1 and 5 shards: the merged top 10 is the single top 10."""
    corpus = tmp_path / "slice.jsonl"
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        corpus.write_text("".join(itertools.islice(fh, 800)), encoding="utf-8")
    build_index(corpus, tmp_path / "one", 1)
    build_index(corpus, tmp_path / "five", 5)
    (single,) = open_index(tmp_path / "one")
    shards = open_index(tmp_path / "five")
    queries = list(load_collection(SCIFACT).queries.values())[:40]
    for text in queries:
        terms = single.analyze(text)
        expected = [(h.doc_id, h.score) for h in single.search_terms(terms, 10)]
        merged = merge_top_k([s.search_terms(terms, 10) for s in shards], 10)
        assert [(h.doc_id, h.score) for h in merged] == expected
