"""The per-shard call limit: bounded slots, FIFO waiters, cancellation-safe hand-over."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.limit import CallLimit


def test_try_acquire_takes_free_slots_only() -> None:
    """Slots are taken synchronously until none is free."""
    limit = CallLimit(2)
    assert limit.try_acquire()
    assert limit.try_acquire()
    assert not limit.try_acquire()
    assert limit.in_flight == 2
    limit.release()
    assert limit.in_flight == 1


def test_a_limit_needs_a_slot() -> None:
    """Zero slots is a configuration error."""
    with pytest.raises(ValueError, match="max_inflight"):
        CallLimit(0)


async def test_waiters_are_served_in_arrival_order() -> None:
    """A released slot goes straight to the longest waiter, not to a newcomer."""
    limit = CallLimit(1)
    await limit.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await limit.acquire()
        order.append(name)

    first = asyncio.create_task(take("first"))
    second = asyncio.create_task(take("second"))
    await asyncio.sleep(0)
    assert limit.waiting == 2
    assert not limit.try_acquire()  # a newcomer may not jump the queue
    limit.release()
    await first
    limit.release()
    await second
    assert order == ["first", "second"]
    limit.release()
    assert limit.in_flight == 0


async def test_cancelled_waiter_gives_up_its_place() -> None:
    """A waiter cancelled before its turn is skipped; the slot goes to the next one."""
    limit = CallLimit(1)
    await limit.acquire()
    gone = asyncio.create_task(limit.acquire())
    stays = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    limit.release()
    await stays
    assert limit.in_flight == 1


async def test_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    """If a waiter is cancelled right after being handed a slot, the slot is not lost."""
    limit = CallLimit(1)
    await limit.acquire()
    unlucky = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    limit.release()  # hands the slot to `unlucky`...
    unlucky.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert limit.in_flight == 0
    assert limit.try_acquire()
