"""Merging shard top-k lists into one global top-k."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggregator import Hit, merge_top_k
from aggregator.merge import rank_key

# Documents with one score each (a document scores the same wherever it is found), spread
# over shards, possibly on several shards at once (replicated or duplicated documents).
_doc_scores = st.dictionaries(
    keys=st.text(alphabet="abcdefgh", min_size=1, max_size=3),
    values=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, -1.0, 3.25]),
    min_size=0,
    max_size=40,
)


@given(
    doc_scores=_doc_scores,
    placement=st.lists(st.sets(st.integers(0, 4), min_size=1), min_size=40, max_size=40),
    k=st.integers(1, 15),
)
def test_merging_shard_top_k_equals_top_k_of_the_union(
    doc_scores: dict[str, float], placement: list[set[int]], k: int
) -> None:
    """Each shard's own top-k, merged, equals the top-k of all documents together."""
    shards: dict[int, list[Hit]] = {i: [] for i in range(5)}
    union: list[Hit] = []
    for (doc, score), where in zip(doc_scores.items(), placement, strict=False):
        for shard in where:
            hit = Hit(doc, score, f"shard-{shard}")
            shards[shard].append(hit)
            union.append(hit)
    shard_top_k = [sorted(hits, key=rank_key)[:k] for hits in shards.values()]
    merged = merge_top_k(shard_top_k, k)
    expected = merge_top_k([union], k)
    assert merged == expected
    assert len({h.doc_id for h in merged}) == len(merged)
    assert len(merged) == min(k, len(doc_scores))


def test_order_is_score_descending_with_doc_id_tie_break() -> None:
    """Equal scores are ordered by doc id, so the output never depends on arrival order."""
    a = [Hit("b", 1.0, "s1"), Hit("z", 3.0, "s1")]
    b = [Hit("a", 1.0, "s2"), Hit("c", 2.0, "s2")]
    assert [h.doc_id for h in merge_top_k([a, b], 10)] == ["z", "c", "a", "b"]
    assert merge_top_k([a, b], 10) == merge_top_k([b, a], 10)


def test_duplicate_document_counted_once_keeping_its_best_hit() -> None:
    """The same document from two sources appears once, with its best score."""
    merged = merge_top_k([[Hit("d", 1.0, "s1")], [Hit("d", 2.0, "s2"), Hit("e", 1.5, "s2")]], 5)
    assert merged == [Hit("d", 2.0, "s2"), Hit("e", 1.5, "s2")]


def test_k_limits_and_empty_inputs() -> None:
    """k caps the output; empty inputs merge to nothing."""
    hits = [Hit(str(i), float(i), "s") for i in range(10)]
    assert [h.doc_id for h in merge_top_k([hits], 3)] == ["9", "8", "7"]
    assert merge_top_k([], 3) == []
    assert merge_top_k([hits], 0) == []
