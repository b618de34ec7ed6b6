"""Validation of the query and completeness values."""

from __future__ import annotations

import math

import pytest

from aggregator import Completeness, Hit, InvalidQuery, Query
from aggregator.errors import InvalidHit, ShardMalformedReply


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "must not be empty"),
        ({"text": "   "}, "must not be empty"),
        ({"text": "x" * 5000}, "longer than"),
        ({"text": "q", "k": 0}, "k must be"),
        ({"text": "q", "k": 1001}, "k must be"),
        ({"text": "q", "k": True}, "k must be"),
        ({"text": "q", "k": 2.0}, "k must be"),
        ({"text": "q", "deadline_ms": -5}, "deadline_ms"),
        ({"text": "q", "deadline_ms": math.nan}, "deadline_ms"),
        ({"text": "q", "min_coverage": 0}, "min_coverage"),
        ({"text": "q", "min_coverage": 1.5}, "min_coverage"),
        ({"text": 3}, "must be a string"),
    ],
)
def test_invalid_queries_raise_a_typed_error(kwargs: dict[str, object], message: str) -> None:
    """Every out-of-range query parameter raises InvalidQuery with a clear message."""
    with pytest.raises(InvalidQuery, match=message):
        Query(**kwargs)  # type: ignore[arg-type]


def test_valid_query_defaults() -> None:
    """k defaults to 10 and no budget means the coordinator's default applies."""
    q = Query("hello")
    assert (q.k, q.deadline_ms, q.min_coverage) == (10, None, None)


def test_completeness_counts_must_add_up() -> None:
    """A completeness whose shard counts do not add up cannot be built."""
    with pytest.raises(ValueError, match="add up"):
        Completeness(3, 1, 1, 0, 0, 10, 5, 0.5, True)
    with pytest.raises(ValueError, match="coverage"):
        Completeness(1, 1, 0, 0, 0, 10, 5, 1.5, False)


@pytest.mark.parametrize(
    ("doc_id", "score", "message"),
    [
        ("", 1.0, "invalid doc id"),
        (7, 1.0, "invalid doc id"),
        ("d", math.nan, "non-finite"),
        ("d", math.inf, "non-finite"),
        ("d", True, "non-numeric"),
        ("d", "1.0", "non-numeric"),
    ],
)
def test_a_hit_cannot_be_built_malformed(doc_id: object, score: object, message: str) -> None:
    """Hits validate their id and score when built; the error is a malformed shard reply."""
    with pytest.raises(InvalidHit, match=message) as info:
        Hit(doc_id, score, "s")  # type: ignore[arg-type]
    assert isinstance(info.value, ShardMalformedReply)


def test_integer_scores_are_accepted() -> None:
    """An integer score is a finite number, so it is a valid hit."""
    assert Hit("d", 3, "s").score == 3
