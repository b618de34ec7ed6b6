"""Validation of the query and completeness values."""

from __future__ import annotations

import math

import pytest

from aggregator import Completeness, InvalidQuery, Query


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
