"""Scripted shard backends for coordinator tests: fixed latencies, errors, hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aggregator import Deadline, Hit, Query, ShardReply


class ScriptedShard:
    """Answers after ``latency_s`` of loop time with ``hits``, or raises ``error``."""

    def __init__(
        self,
        name: str,
        latency_s: float,
        *,
        docs: int = 100,
        hits: Sequence[tuple[str, float]] = (),
        error: BaseException | None = None,
        reply: object = None,
        ignore_cancel_s: float = 0.0,
    ) -> None:
        self.name = name
        self.doc_count = docs
        self.latency_s = latency_s
        self.hits = tuple(Hit(d, s, name) for d, s in hits)
        self.error = error
        self.reply = reply
        self.ignore_cancel_s = ignore_cancel_s
        self.calls = 0
        self.cancelled = 0
        self.finished = 0

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        self.calls += 1
        try:
            await asyncio.sleep(self.latency_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            if self.ignore_cancel_s:
                # A backend slow to honour cancellation: it cleans up for a while first.
                await asyncio.sleep(self.ignore_cancel_s)
            raise
        finally:
            self.finished += 1
        if self.error is not None:
            raise self.error
        if self.reply is not None:
            return self.reply  # type: ignore[return-value]
        return ShardReply(self.name, self.doc_count, self.hits[: query.k])
