"""Completeness accounting from per-shard outcomes."""

from __future__ import annotations

import pytest

from aggregator import OutcomeStatus, ShardOutcome, account


def _o(status: str, docs: int = 0) -> ShardOutcome:
    return ShardOutcome("s", OutcomeStatus(status), 1.0, docs=docs)


def test_every_status_lands_in_exactly_one_count() -> None:
    """ok / timeout / error+rejected / skipped partition the shards."""
    outcomes = [_o("ok", 10), _o("timeout"), _o("error"), _o("rejected"), _o("skipped")]
    c = account(outcomes, [10, 20, 30, 40, 50])
    assert (c.shards_ok, c.shards_timed_out, c.shards_failed, c.shards_skipped) == (1, 1, 2, 1)
    assert (c.docs_total, c.docs_searched) == (150, 10)
    assert c.coverage == pytest.approx(10 / 150)
    assert c.partial


def test_missing_shards_still_count_in_the_total() -> None:
    """A shard that never answered still counts its documents in docs_total."""
    c = account([_o("ok", 100), _o("timeout")], [100, 300])
    assert c.coverage == pytest.approx(0.25)


def test_a_shard_cannot_claim_more_documents_than_it_holds() -> None:
    """Searched documents are capped at the shard's known count."""
    c = account([_o("ok", 10_000)], [100])
    assert c.docs_searched == 100
    assert c.coverage == 1.0
    assert not c.partial


def test_empty_shards_have_full_coverage_when_all_answered() -> None:
    """With zero documents, coverage is 1 when every shard answered and 0 otherwise."""
    assert account([_o("ok")], [0]).coverage == 1.0
    assert account([_o("ok"), _o("error")], [0, 0]).coverage == 0.0


def test_lengths_must_match() -> None:
    """One document count per outcome."""
    with pytest.raises(ValueError, match="one document count"):
        account([_o("ok")], [])
