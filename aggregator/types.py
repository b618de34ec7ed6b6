"""The immutable values a query passes through: query, hits, replies, outcomes, completeness.

Everything here is a frozen ``msgspec.Struct`` (immutable, slotted, hashable, compared by
value) validated on construction, so a value that exists is a value that makes sense. Structs
rather than frozen dataclasses because these are built on the hot path, several per shard per
query, and a Struct is built about ten times faster.
"""

from __future__ import annotations

import math
from enum import StrEnum

import msgspec

from aggregator.deadline import validate_budget_ms
from aggregator.errors import InvalidHit, InvalidQuery, InvalidReply

__all__ = [
    "MAX_K",
    "MAX_QUERY_CHARS",
    "Completeness",
    "Hit",
    "OutcomeStatus",
    "Query",
    "SearchResponse",
    "ShardOutcome",
    "ShardReply",
]

#: Largest ``k`` a query may ask for.
MAX_K = 1000
#: Longest query text accepted, in characters.
MAX_QUERY_CHARS = 4096


class Query(msgspec.Struct, frozen=True):
    """What the user asked: text, how many hits, and the end-to-end budget.

    ``deadline_ms`` is the whole budget in milliseconds (``None``: no limit).
    ``min_coverage`` (0 < c <= 1) turns on "good enough" answers: once that share of the
    documents has been searched, the coordinator waits only a grace fraction of the remaining
    budget for the rest.
    """

    text: str
    k: int = 10
    deadline_ms: float | None = None
    min_coverage: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidQuery(f"query text must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise InvalidQuery("query text must not be empty")
        if len(self.text) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"query text is longer than {MAX_QUERY_CHARS} characters")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise InvalidQuery(f"k must be an integer in 1..{MAX_K}, got {self.k!r}")
        validate_budget_ms(self.deadline_ms)
        if self.min_coverage is not None:
            c = self.min_coverage
            if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c <= 1:
                raise InvalidQuery(f"min_coverage must be in (0, 1], got {c!r}")


class Hit(msgspec.Struct, frozen=True):
    """One ranked document: its id, score, the shard that found it and optional title.

    Raises :class:`InvalidHit` for an empty or non-string id, or a score that is not a
    finite number: a NaN would corrupt the ranking of every hit merged with it.
    """

    doc_id: str
    score: float
    shard: str
    title: str | None = None

    def __post_init__(self) -> None:
        doc_id = self.doc_id
        if type(doc_id) is not str or not doc_id:
            raise InvalidHit(f"hit has an invalid doc id {doc_id!r}")
        score = self.score
        if type(score) is not float and (
            isinstance(score, bool) or not isinstance(score, int | float)
        ):
            raise InvalidHit(f"hit {doc_id!r} has a non-numeric score {score!r}")
        if not math.isfinite(score):
            raise InvalidHit(f"hit {doc_id!r} has a non-finite score {score!r}")


class ShardReply(msgspec.Struct, frozen=True):
    """What one shard returned: its hits (best first), its document count and its own time.

    Raises :class:`InvalidReply` for a negative or non-integer document count, or hits that
    are not a tuple of :class:`Hit`.
    """

    shard: str
    docs: int
    hits: tuple[Hit, ...]
    took_ms: float = 0.0

    def __post_init__(self) -> None:
        docs = self.docs
        if type(docs) is not int and (isinstance(docs, bool) or not isinstance(docs, int)):
            raise InvalidReply(f"document count must be a non-negative integer, got {docs!r}")
        if docs < 0:
            raise InvalidReply(f"document count must be a non-negative integer, got {docs!r}")
        hits = self.hits
        if type(hits) is not tuple:
            raise InvalidReply(f"hits must be a tuple, got {type(hits).__name__}")
        # map/set loop in C: this runs for every reply a shard builds.
        if hits and set(map(type, hits)) != _HIT_TYPE:
            for hit in hits:
                if not isinstance(hit, Hit):
                    raise InvalidReply(f"hit must be a Hit, got {type(hit).__name__}")


_HIT_TYPE = {Hit}


class OutcomeStatus(StrEnum):
    """How one shard's part of a query ended."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    REJECTED = "rejected"
    SKIPPED = "skipped"


class ShardOutcome(msgspec.Struct, frozen=True):
    """One shard's part of a query, as reported to the user.

    ``latency_ms`` runs from dispatch to the answer (or to the moment it was given up);
    ``hits`` is how many hits the shard returned; ``docs`` its document count;
    ``replica`` names the replica that answered, ``hedged`` tells whether a second copy was
    sent and ``attempts`` how many requests were made in all.
    """

    shard: str
    status: OutcomeStatus
    latency_ms: float
    hits: int = 0
    docs: int = 0
    reason: str | None = None
    replica: str | None = None
    hedged: bool = False
    attempts: int = 1


class Completeness(msgspec.Struct, frozen=True):
    """How complete an answer is, in shards and in documents.

    ``shards_failed`` counts ``error`` and ``rejected`` outcomes; every shard is in exactly
    one of ok / timed out / failed / skipped, so the counts always add up to ``shards_total``.
    ``coverage`` is ``docs_searched / docs_total`` (1.0 for an empty cluster that answered).
    """

    shards_total: int
    shards_ok: int
    shards_timed_out: int
    shards_failed: int
    shards_skipped: int
    docs_total: int
    docs_searched: int
    coverage: float
    partial: bool

    def __post_init__(self) -> None:
        parts = self.shards_ok + self.shards_timed_out + self.shards_failed + self.shards_skipped
        if parts != self.shards_total:
            raise ValueError(f"shard counts add up to {parts}, not {self.shards_total}")
        if not 0.0 <= self.coverage <= 1.0 or math.isnan(self.coverage):
            raise ValueError(f"coverage must be in [0, 1], got {self.coverage!r}")


class SearchResponse(msgspec.Struct, frozen=True):
    """The answer: merged hits, how complete they are, every shard's outcome, and timings."""

    hits: tuple[Hit, ...]
    completeness: Completeness
    shards: tuple[ShardOutcome, ...]
    took_ms: float
    deadline_ms: float | None

    @property
    def partial(self) -> bool:
        """True when any shard did not answer."""
        return self.completeness.partial
