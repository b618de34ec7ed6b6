"""Finite capacity for simulated shards, so overload has somewhere to queue.

A simulated shard answers every call after its drawn latency however many calls run at once:
its capacity is infinite, and no offered load can overload it. Real shards have a fixed number
of workers; past their capacity, calls queue and latency grows without bound until something
sheds. :class:`WorkerPool` gives a backend that shape: at most ``workers`` calls run at once
(each holds its worker for the whole drawn latency), at most ``max_queue`` wait in FIFO order
for a worker (overflow policy: reject at once with :class:`ShardRejected`, as a shard server's
429), and the wait counts against the caller's deadline (a call still queued at its deadline
ends with :class:`ShardTimeout`).

With ``workers`` W and mean latency L seconds, one shard serves at most W / L calls per
second; a query fans out to every shard, so that is also the cluster's capacity in queries
per second.
"""

from __future__ import annotations

import asyncio

from aggregator.backend import ShardBackend
from aggregator.clock import Clock, LoopClock
from aggregator.deadline import Deadline
from aggregator.errors import ShardRejected, ShardTimeout
from aggregator.types import Query, ShardReply

__all__ = ["WorkerPool"]


class WorkerPool:
    """``inner`` with at most ``workers`` calls running and ``max_queue`` waiting.

    ``name`` and ``doc_count`` are the inner backend's. Raises :class:`ShardRejected` when the
    queue is full and :class:`ShardTimeout` when the deadline passes in the queue; the inner
    backend's own errors pass through. ``rejected`` and ``queue_timeouts`` count those two.
    """

    __slots__ = (
        "_clock",
        "_semaphore",
        "_waiting",
        "inner",
        "max_queue",
        "queue_timeouts",
        "rejected",
        "workers",
    )

    def __init__(
        self,
        inner: ShardBackend,
        *,
        workers: int,
        max_queue: int,
        clock: Clock | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.inner = inner
        self.workers = workers
        self.max_queue = max_queue
        self._clock: Clock = clock or LoopClock()
        self._semaphore = asyncio.Semaphore(workers)
        self._waiting = 0
        self.rejected = 0
        self.queue_timeouts = 0

    @property
    def name(self) -> str:
        """The inner backend's name."""
        return self.inner.name

    @property
    def doc_count(self) -> int:
        """The inner backend's document count."""
        return self.inner.doc_count

    @property
    def queued(self) -> int:
        """Calls waiting for a worker now."""
        return self._waiting

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """Wait for a worker (within the deadline), then run the inner search on it."""
        if self._semaphore.locked():
            if self._waiting >= self.max_queue:
                self.rejected += 1
                raise ShardRejected(f"all {self.workers} workers busy and queue full")
            remaining_s = deadline.remaining_s(self._clock.now_s())
            self._waiting += 1
            try:
                async with asyncio.timeout(None if deadline.is_unbounded else remaining_s):
                    await self._semaphore.acquire()
            except TimeoutError:
                self.queue_timeouts += 1
                raise ShardTimeout("deadline passed waiting for a worker") from None
            finally:
                self._waiting -= 1
        else:
            await self._semaphore.acquire()
        try:
            return await self.inner.search(query, deadline)
        finally:
            self._semaphore.release()
