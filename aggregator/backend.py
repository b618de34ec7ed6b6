"""The protocol every shard backend implements.

``aggregator`` defines it; ``shards`` (simulated and BM25 shards) and the HTTP shard client
implement it. A backend is one copy of one shard (a replica).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aggregator.deadline import Deadline
from aggregator.types import Query, ShardReply

__all__ = ["ShardBackend"]


@runtime_checkable
class ShardBackend(Protocol):
    """One replica of one shard.

    ``name`` identifies the shard (replicas of one shard share it); ``doc_count`` is how many
    documents the shard holds, known before any query so coverage can be computed even for a
    shard that never answers.
    """

    @property
    def name(self) -> str:
        """The shard's name, unique in a cluster."""
        ...

    @property
    def doc_count(self) -> int:
        """How many documents the shard holds."""
        ...

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """Return the shard's top ``query.k`` hits, best first.

        ``deadline`` is on the running loop's clock; the backend should stop work once it has
        passed and raise :class:`aggregator.errors.ShardTimeout`. It may raise any
        :class:`aggregator.errors.ShardError`; other exceptions are recorded as errors too.
        Cancellation (the coordinator gave up on it) must propagate.
        """
        ...
