"""Merging ranked shard results into one global top-k."""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from aggregator.types import Hit

__all__ = ["merge_top_k", "rank_key"]

_score = attrgetter("score")


def rank_key(hit: Hit) -> tuple[float, str, str]:
    """The global order: score descending, then doc id, then shard name (both ascending)."""
    return (-hit.score, hit.doc_id, hit.shard)


# Why this shape: the merge runs once per query over (shards x k) hits, so it is on the hot
# path. A full sort by the three-part rank key would call a Python key function per hit;
# instead we sort by score alone (a C-level key), then walk down from the best score until k
# distinct documents are found. That k-th document's score is the cutoff: every document of
# the true top-k scores at least that much, so only hits scoring >= cutoff (ties included)
# can matter. Among those few we keep each document's best hit by the full key (the same
# document can arrive from two sources: replicas, or a document indexed twice) and order them
# by the full key, so ties fall to doc id, then shard name, whatever the arrival order.
# Because each shard's list is its own top-k by the same total order, the top-k of the merged
# lists equals the top-k of the union of all documents (property-tested in
# tests/aggregator/test_merge.py).
def merge_top_k(lists: Iterable[Iterable[Hit]], k: int) -> list[Hit]:
    """The best ``k`` hits of all ``lists``, each document once, best first.

    Ties in score are broken by doc id, then shard name, so the output is deterministic.
    """
    if k <= 0:
        return []
    hits: list[Hit] = []
    for part in lists:
        hits.extend(part)
    hits.sort(key=_score, reverse=True)
    picked: dict[str, Hit] = {}
    cutoff: float | None = None
    for hit in hits:
        if cutoff is not None and hit.score < cutoff:
            break
        seen = picked.get(hit.doc_id)
        if seen is None:
            picked[hit.doc_id] = hit
            if cutoff is None and len(picked) == k:
                cutoff = hit.score
        elif rank_key(hit) < rank_key(seen):
            picked[hit.doc_id] = hit
    return sorted(picked.values(), key=rank_key)[:k]
