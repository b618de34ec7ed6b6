"""Which failures are retried, and full-jitter backoff from an injected generator."""

from __future__ import annotations

import random

import pytest

from aggregator.errors import (
    ShardError,
    ShardMalformedReply,
    ShardRejected,
    ShardTimeout,
    ShardUnavailable,
)
from aggregator.retry import FullJitterBackoff, RetryConfig, is_retryable


def test_only_fast_failures_are_retryable() -> None:
    """ShardUnavailable is retried; a timeout, a rejection or a malformed reply never."""
    assert is_retryable(ShardUnavailable("connection refused"))
    assert not is_retryable(ShardTimeout("budget spent"))
    assert not is_retryable(ShardRejected("queue full"))
    assert not is_retryable(ShardMalformedReply("bad json"))
    assert not is_retryable(ShardError("other"))
    assert not is_retryable(RuntimeError("boom"))


def test_ceiling_doubles_and_caps() -> None:
    """The draw's upper end doubles per retry from the base and stops at the maximum."""
    backoff = FullJitterBackoff(
        RetryConfig(base_backoff_s=0.01, max_backoff_s=0.05), random.Random(0)
    )
    assert [backoff.ceiling_s(n) for n in (1, 2, 3, 4, 1000)] == pytest.approx(
        [0.01, 0.02, 0.04, 0.05, 0.05]
    )
    with pytest.raises(ValueError, match="start at 1"):
        backoff.ceiling_s(0)


def test_backoff_is_full_jitter_and_reproducible() -> None:
    """Draws spread over [0, ceiling] and the same seed gives the same draws."""
    config = RetryConfig(base_backoff_s=0.01, max_backoff_s=0.01)
    draws = [FullJitterBackoff(config, random.Random(7)).backoff_s(1) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    many = FullJitterBackoff(config, random.Random(1))
    samples = [many.backoff_s(1) for _ in range(2000)]
    assert all(0.0 <= s <= 0.01 for s in samples)
    assert min(samples) < 0.001
    assert max(samples) > 0.009


def test_invalid_config_is_rejected() -> None:
    """A base above the maximum or a negative base is refused."""
    with pytest.raises(ValueError, match="base_backoff_s"):
        RetryConfig(base_backoff_s=1.0, max_backoff_s=0.1)
    with pytest.raises(ValueError, match="base_backoff_s"):
        RetryConfig(base_backoff_s=-1.0)
