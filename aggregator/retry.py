"""When a failed shard request may be tried again, and how long to wait first.

Only fast failures are retried: :class:`~aggregator.errors.ShardUnavailable` (connection
refused or reset, 5xx), where the replica never did the work and another replica likely can.
Never a timeout: the query's budget is spent, and retrying a slow shard adds load exactly where
it hurts (Elasticsearch stopped retrying timed-out shard requests for this reason). Never a
rejection: the shard said it is overloaded. Retries are drawn from the same
:class:`~aggregator.hedging.BackupBudget` as hedges, and the dispatcher retries only when the
backoff ends before the deadline.

Backoff is "full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): a uniform
draw in ``[0, min(max_backoff_s, base_backoff_s * 2 ** (n - 1))]``. Rationale: coordinators
that failed together would retry together with a fixed backoff; spreading the retries over the
whole interval breaks up that stampede, and beats "equal jitter" on total work.

Pure: the random generator is injected, so tests draw the same backoffs every run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from aggregator.errors import ShardRejected, ShardTimeout, ShardUnavailable

__all__ = ["FullJitterBackoff", "RetryConfig", "is_retryable"]


def is_retryable(exc: BaseException) -> bool:
    """True for a fast failure worth retrying on another replica (``ShardUnavailable``)."""
    if isinstance(exc, ShardTimeout | ShardRejected):
        return False
    return isinstance(exc, ShardUnavailable)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Backoff bounds in seconds; ``enabled=False`` turns retries off."""

    enabled: bool = True
    base_backoff_s: float = 0.005
    max_backoff_s: float = 0.050

    def __post_init__(self) -> None:
        if not 0 <= self.base_backoff_s <= self.max_backoff_s < math.inf:
            raise ValueError("need 0 <= base_backoff_s <= max_backoff_s, both finite")


class FullJitterBackoff:
    """Draws full-jitter backoffs from an injected random generator."""

    __slots__ = ("_rng", "config")

    def __init__(self, config: RetryConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng

    def ceiling_s(self, retry_number: int) -> float:
        """The upper end of the draw for retry ``retry_number`` (1 for the first retry)."""
        if retry_number < 1:
            raise ValueError(f"retry numbers start at 1, got {retry_number!r}")
        # Cap the exponent: 2 ** 1100 would overflow a float long after the cap applies.
        exponent = min(retry_number - 1, 60)
        return min(self.config.max_backoff_s, self.config.base_backoff_s * 2.0**exponent)

    def backoff_s(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number``: uniform in ``[0, ceiling]``."""
        return self._rng.uniform(0.0, self.ceiling_s(retry_number))
