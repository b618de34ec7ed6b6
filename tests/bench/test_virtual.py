"""Tests of bench.virtual: the virtual-time loop jumps to timers and keeps asyncio semantics."""

from __future__ import annotations

import asyncio

import pytest

from bench.virtual import VirtualTimeLoop, run_virtual


def test_sleep_takes_no_wall_time_and_moves_the_clock() -> None:
    """A 100 s sleep returns with loop.time() advanced by exactly 100 s."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(100.0)
        return start, loop.time()

    start, end = run_virtual(main, start_s=5.0)
    assert start == 5.0
    assert end == pytest.approx(105.0)


def test_timers_fire_in_order_with_timeouts_honoured() -> None:
    """Concurrent sleeps finish in deadline order; asyncio.timeout and asyncio.wait use the
    virtual clock."""

    async def main() -> tuple[list[int], bool, float]:
        loop = asyncio.get_running_loop()
        order: list[int] = []

        async def sleeper(i: int, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            order.append(i)

        tasks = [asyncio.create_task(sleeper(i, d)) for i, d in enumerate((0.3, 0.1, 0.2))]
        await asyncio.gather(*tasks)
        timed_out = False
        try:
            async with asyncio.timeout(1.5):
                await asyncio.sleep(10.0)
        except TimeoutError:
            timed_out = True
        slow = asyncio.create_task(asyncio.sleep(50.0))
        done, _ = await asyncio.wait({slow}, timeout=2.0)
        slow.cancel()
        return order, timed_out and not done, loop.time()

    order, timed_out, now = run_virtual(main)
    assert order == [1, 2, 0]
    assert timed_out
    assert now == pytest.approx(0.3 + 1.5 + 2.0)


def test_a_loop_with_nothing_left_to_run_raises_instead_of_hanging() -> None:
    """Waiting on a future nobody completes, with no timer pending, is reported, not a hang."""

    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(RuntimeError, match="nothing left to run"):
        run_virtual(main)


def test_loop_counts_its_jumps() -> None:
    """Each idle gap is one jump of the clock."""
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(asyncio.sleep(1.0))
        loop.run_until_complete(asyncio.sleep(1.0))
        assert loop.jumps == 2
        assert loop.time() == pytest.approx(2.0)
    finally:
        loop.close()
