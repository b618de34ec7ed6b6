"""IndexShard as a ShardBackend: hits, titles, deadlines, and sharded == single top-k."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import Coordinator, CoordinatorConfig, Deadline, Query, ShardTimeout
from aggregator.backend import ShardBackend
from aggregator.merge import merge_top_k
from shards.index import (
    AnalyzerConfig,
    IndexShard,
    build_index,
    build_index_from_documents,
    open_index,
)
from shards.index.builder import Document
from shards.index.postings import Expired


@pytest.fixture
def shards(tiny_corpus: Path, tmp_path: Path) -> list[IndexShard]:
    build_index(tiny_corpus, tmp_path / "idx", 3)
    return open_index(tmp_path / "idx")


def test_index_shards_implement_the_backend_protocol(shards: list[IndexShard]) -> None:
    """Names are shard-000.., doc counts add up to the corpus."""
    assert all(isinstance(s, ShardBackend) for s in shards)
    assert [s.name for s in shards] == ["shard-000", "shard-001", "shard-002"]
    assert sum(s.doc_count for s in shards) == 6


async def test_search_returns_ranked_hits_with_titles(shards: list[IndexShard]) -> None:
    """Through the coordinator: best first, titles attached, only matching documents."""
    response = await Coordinator(shards).search(Query("cheese", k=10))
    assert {h.doc_id for h in response.hits} == {"d3", "d5"}
    assert response.hits[0].score >= response.hits[1].score
    titles = {h.doc_id: h.title for h in response.hits}
    assert titles == {"d3": "Mice", "d5": None}  # no title -> None
    assert not response.partial


async def test_a_query_with_no_index_terms_finds_nothing(shards: list[IndexShard]) -> None:
    """Stop words only: every shard answers ok with no hits."""
    response = await Coordinator(shards).search(Query("the and of", k=5))
    assert response.hits == ()
    assert response.completeness.shards_ok == 3


def test_open_index_selects_shards_and_rejects_unknown_ids(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """shard_ids picks shards by number; out of range or duplicate ids raise ValueError."""
    build_index(tiny_corpus, tmp_path / "idx", 3)
    assert [s.name for s in open_index(tmp_path / "idx", shard_ids=[2, 0])] == [
        "shard-002",
        "shard-000",
    ]
    with pytest.raises(ValueError, match="no shard 3"):
        open_index(tmp_path / "idx", shard_ids=[3])
    with pytest.raises(ValueError, match="duplicate shard ids"):
        open_index(tmp_path / "idx", shard_ids=[1, 1])


@pytest.mark.looptime
async def test_a_spent_budget_raises_shard_timeout_before_any_work(
    shards: list[IndexShard],
) -> None:
    """A deadline that has already passed never reaches the scoring pool."""
    loop = asyncio.get_running_loop()
    deadline = Deadline.after(loop.time(), 10)
    await asyncio.sleep(1)
    with pytest.raises(ShardTimeout, match="before the shard started"):
        await shards[0].search(Query("cats"), deadline)


def test_scoring_stops_between_terms_once_its_stop_instant_passed(
    shards: list[IndexShard],
) -> None:
    """The kernel checks its stop instant before work: a past instant raises Expired."""
    with pytest.raises(Expired, match="deadline passed"):
        shards[0].postings.top_k(["cat"], 5, stop_at_s=0.0)


def test_scoring_stops_when_its_caller_gave_up(shards: list[IndexShard]) -> None:
    """A set cancel flag stops the kernel before it scores anything."""
    flag = threading.Event()
    flag.set()
    with pytest.raises(Expired, match="cancelled"):
        shards[0].postings.top_k(["cat"], 5, cancelled=flag)


@pytest.mark.looptime
async def test_index_shards_answer_through_the_pool_in_virtual_time(
    shards: list[IndexShard],
) -> None:
    """Scoring in threads works under a virtual clock: the budget is not eaten while it runs."""
    coordinator = Coordinator(shards, config=CoordinatorConfig(default_deadline_ms=50))
    response = await coordinator.search(Query("cats mice", k=3))
    assert response.completeness.shards_ok == 3
    assert [h.doc_id for h in response.hits][:1] == ["d1"]


# -- sharded top-k equals single-index top-k ---------------------------------------------------

_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]


def _docs_strategy() -> st.SearchStrategy[list[Document]]:
    text = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=8).map(" ".join)
    return st.lists(
        st.builds(Document, doc_id=st.text("abcdefgh123", min_size=1, max_size=5), text=text),
        min_size=1,
        max_size=40,
        unique_by=lambda d: d.doc_id,
    )


@settings(max_examples=25, deadline=None)
@given(
    docs=_docs_strategy(),
    n_shards=st.integers(1, 6),
    query=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4),
    k=st.integers(1, 12),
)
def test_merged_top_k_of_shards_equals_single_index_top_k(
    docs: list[Document], n_shards: int, query: list[str], k: int
) -> None:
    """Same ids, same order, bit-identical scores, ties broken by id, for any sharding."""
    plain = AnalyzerConfig(stop_words="none", stemmer="none")
    with tempfile.TemporaryDirectory() as tmp:
        build_index_from_documents(docs, Path(tmp) / "one", 1, analyzer=plain)
        build_index_from_documents(docs, Path(tmp) / "many", n_shards, analyzer=plain)
        (single,) = open_index(Path(tmp) / "one")
        sharded = open_index(Path(tmp) / "many")
        expected = [(h.doc_id, h.score) for h in single.search_terms(query, k)]
        merged = merge_top_k([s.search_terms(query, k) for s in sharded], k)
    assert [(h.doc_id, h.score) for h in merged] == expected
    scores = [s for _, s in expected]
    assert scores == sorted(scores, reverse=True)
    for (a_id, a_score), (b_id, b_score) in itertools.pairwise(expected):
        assert a_score > b_score or a_id < b_id
