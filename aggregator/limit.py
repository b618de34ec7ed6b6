"""A bound on concurrent calls to one shard, shared by all queries."""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["CallLimit"]


class CallLimit:
    """At most ``max_inflight`` calls at once; further callers wait in arrival order.

    Overflow policy: block. A waiter is bounded by its own query's deadline (the coordinator
    cancels it when the deadline passes), and the number of waiters by the number of queries
    in flight, which admission control bounds. This does what an ``asyncio.Semaphore`` would,
    but with a synchronous fast path: a free slot is taken without a coroutine call, which
    matters because every shard call of every query passes through here.
    """

    __slots__ = ("_free", "_waiters", "max_inflight")

    def __init__(self, max_inflight: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self._free = max_inflight
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        """Slots taken now."""
        return self.max_inflight - self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now (cancelled ones may be counted until skipped)."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting ahead; never blocks."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in arrival order if none is free."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back, handing it straight to the first live waiter if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
