"""Completeness accounting: from per-shard outcomes to the counts users read."""

from __future__ import annotations

from collections.abc import Sequence

from aggregator.types import Completeness, OutcomeStatus, ShardOutcome

__all__ = ["account"]

# Members bound once: attribute access on an Enum class costs far more than a global read,
# and this runs for every shard of every query.
_OK = OutcomeStatus.OK
_TIMEOUT = OutcomeStatus.TIMEOUT
_SKIPPED = OutcomeStatus.SKIPPED


def account(outcomes: Sequence[ShardOutcome], docs_by_shard: Sequence[int]) -> Completeness:
    """Count ``outcomes`` into a :class:`Completeness`.

    ``docs_by_shard`` lists every shard's document count (as known before the query), in the
    same order as ``outcomes``: a shard that did not answer still counts in ``docs_total``, so
    a missing shard can never be hidden. A shard that answered counts the documents it
    reported searching (never more than its known count). ``error`` and ``rejected``
    outcomes count as failed.
    """
    if len(outcomes) != len(docs_by_shard):
        raise ValueError("need one document count per outcome")
    ok = timed_out = skipped = 0
    docs_searched = 0
    for outcome, docs in zip(outcomes, docs_by_shard, strict=True):
        status = outcome.status
        if status is _OK:
            ok += 1
            reported = outcome.docs
            docs_searched += docs if reported >= docs else max(reported, 0)
        elif status is _TIMEOUT:
            timed_out += 1
        elif status is _SKIPPED:
            skipped += 1
    total = len(outcomes)
    docs_total = sum(docs_by_shard)
    if docs_total > 0:
        coverage = docs_searched / docs_total
    else:
        coverage = 1.0 if ok == total else 0.0
    return Completeness(
        shards_total=total,
        shards_ok=ok,
        shards_timed_out=timed_out,
        shards_failed=total - ok - timed_out - skipped,
        shards_skipped=skipped,
        docs_total=docs_total,
        docs_searched=docs_searched,
        coverage=coverage,
        partial=ok != total,
    )
