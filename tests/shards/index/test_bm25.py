"""BM25 scores against a hand computation on a tiny corpus."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shards.index import AnalyzerConfig, BM25Params, build_index, open_index
from shards.index.bm25 import idf
from tests.shards.index.conftest import write_jsonl

_PLAIN = AnalyzerConfig(stop_words="none", stemmer="none")


def test_idf_is_lucenes() -> None:
    """idf = ln(1 + (N - df + 0.5) / (df + 0.5)), positive even for a term in every document."""
    assert idf(1, 3) == pytest.approx(math.log(1 + 2.5 / 1.5))
    assert idf(3, 3) > 0


def test_scores_match_a_hand_computation(tmp_path: Path) -> None:
    """Three documents, k1=1.2, b=0.75: each score equals the formula worked out by hand."""
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"_id": "a", "text": "apple apple banana"},  # dl 3
            {"_id": "b", "text": "banana cherry"},  # dl 2
            {"_id": "c", "text": "cherry cherry cherry date"},  # dl 4
        ],
    )
    params = BM25Params(k1=1.2, b=0.75)
    build_index(corpus, tmp_path / "idx", 1, analyzer=_PLAIN, bm25=params)
    (shard,) = open_index(tmp_path / "idx")
    n, avgdl = 3, 3.0

    def term(tf: int, dl: int, df: int) -> float:
        norm = 1.2 * (1 - 0.75 + 0.75 * dl / avgdl)
        return math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + norm)

    hits = {h.doc_id: h.score for h in shard.search_terms(["banana", "cherry"], 10)}
    assert hits["a"] == pytest.approx(term(1, 3, 2), rel=1e-6)
    assert hits["b"] == pytest.approx(term(1, 2, 2) + term(1, 2, 2), rel=1e-6)
    assert hits["c"] == pytest.approx(term(3, 4, 2), rel=1e-6)
    apple = shard.search_terms(["apple"], 10)
    assert [h.doc_id for h in apple] == ["a"]
    assert apple[0].score == pytest.approx(term(2, 3, 1), rel=1e-6)


def test_a_repeated_query_term_counts_twice(tmp_path: Path) -> None:
    """Query term frequency weights a term, as Lucene's repeated clauses do."""
    docs = [{"_id": "a", "text": "x y"}, {"_id": "b", "text": "z"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    build_index(corpus, tmp_path / "idx", 1, analyzer=_PLAIN)
    (shard,) = open_index(tmp_path / "idx")
    once = shard.search_terms(["x"], 1)[0].score
    assert shard.search_terms(["x", "x"], 1)[0].score == pytest.approx(2 * once)


def test_params_override_changes_scores_not_matches(tmp_path: Path) -> None:
    """open_index(params=...) rescored with other k1/b: same documents, other scores."""
    docs = [{"_id": "a", "text": "x x y"}, {"_id": "b", "text": "x"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    build_index(corpus, tmp_path / "idx", 1, analyzer=_PLAIN)
    (default,) = open_index(tmp_path / "idx")
    (other,) = open_index(tmp_path / "idx", params=BM25Params(k1=2.0, b=0.0))
    a = default.search_terms(["x"], 5)
    b = other.search_terms(["x"], 5)
    assert {h.doc_id for h in a} == {h.doc_id for h in b} == {"a", "b"}
    assert [h.score for h in a] != [h.score for h in b]


@pytest.mark.parametrize(("k1", "b"), [(-0.1, 0.4), (0.9, 1.5), (math.nan, 0.4)])
def test_bad_parameters_are_rejected(k1: float, b: float) -> None:
    """Negative or NaN k1 and b outside [0, 1] raise ValueError."""
    with pytest.raises(ValueError, match=r"k1|b must"):
        BM25Params(k1, b)
