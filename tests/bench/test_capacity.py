"""Tests of bench.capacity: finite workers, a bounded queue, and deadlines while queued."""

from __future__ import annotations

import asyncio

import pytest

from aggregator import Deadline, Query, ShardRejected, ShardTimeout
from bench.capacity import WorkerPool
from tests.aggregator.fakes import ScriptedShard


def _deadline(budget_ms: float | None) -> Deadline:
    return Deadline.after(asyncio.get_running_loop().time(), budget_ms)


@pytest.mark.looptime
async def test_calls_beyond_the_workers_queue_in_order() -> None:
    """With one worker, three 10 ms calls finish at 10, 20 and 30 ms."""
    pool = WorkerPool(ScriptedShard("s", 0.010), workers=1, max_queue=8)
    loop = asyncio.get_running_loop()
    start = loop.time()
    finished: list[float] = []

    async def call() -> None:
        await pool.search(Query("q"), _deadline(None))
        finished.append(round(loop.time() - start, 6))

    await asyncio.gather(call(), call(), call())
    assert finished == [0.01, 0.02, 0.03]


@pytest.mark.looptime
async def test_a_full_queue_rejects_at_once() -> None:
    """Past workers + max_queue calls, the next is rejected immediately and counted."""
    pool = WorkerPool(ScriptedShard("s", 1.0), workers=1, max_queue=1)
    first = asyncio.create_task(pool.search(Query("q"), _deadline(None)))
    second = asyncio.create_task(pool.search(Query("q"), _deadline(None)))
    await asyncio.sleep(0)
    with pytest.raises(ShardRejected, match="queue full"):
        await pool.search(Query("q"), _deadline(None))
    assert pool.rejected == 1
    await asyncio.gather(first, second)


@pytest.mark.looptime
async def test_the_deadline_counts_while_queued() -> None:
    """A call still waiting for a worker at its deadline ends with ShardTimeout then."""
    pool = WorkerPool(ScriptedShard("s", 1.0), workers=1, max_queue=4)
    loop = asyncio.get_running_loop()
    busy = asyncio.create_task(pool.search(Query("q"), _deadline(None)))
    await asyncio.sleep(0)
    start = loop.time()
    with pytest.raises(ShardTimeout, match="waiting for a worker"):
        await pool.search(Query("q"), _deadline(50))
    assert loop.time() - start == pytest.approx(0.05)
    assert pool.queue_timeouts == 1
    assert pool.queued == 0
    await busy


def test_invalid_limits_are_rejected() -> None:
    """Zero workers or a negative queue is a ValueError."""
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(ScriptedShard("s", 0.0), workers=0, max_queue=1)
    with pytest.raises(ValueError, match="max_queue"):
        WorkerPool(ScriptedShard("s", 0.0), workers=1, max_queue=-1)
