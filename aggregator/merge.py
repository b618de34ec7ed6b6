"""Merging ranked shard results into one global top-k."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from aggregator.types import Hit

__all__ = ["merge_top_k", "rank_key"]


def rank_key(hit: Hit) -> tuple[float, str, str]:
    """The global order: score descending, then doc id, then shard name (both ascending)."""
    return (-hit.score, hit.doc_id, hit.shard)


# Why dedupe first, then select: the same document can arrive from two sources (replicas
# answering for one shard, or a document indexed twice). Keeping each document's best hit
# (by the same key as the final order) before selecting makes the result independent of
# arrival order. Selection with heapq.nsmallest is O(n log k), and because every shard's list
# is its own top-k by the same total order, the top-k of the merged lists equals the top-k of
# the union of all documents (property-tested in tests/aggregator/test_merge.py).
def merge_top_k(lists: Iterable[Iterable[Hit]], k: int) -> list[Hit]:
    """The best ``k`` hits of all ``lists``, each document once, best first.

    Ties in score are broken by doc id, then shard name, so the output is deterministic.
    """
    if k <= 0:
        return []
    best: dict[str, Hit] = {}
    for hits in lists:
        for hit in hits:
            seen = best.get(hit.doc_id)
            if seen is None or rank_key(hit) < rank_key(seen):
                best[hit.doc_id] = hit
    return heapq.nsmallest(k, best.values(), key=rank_key)
