"""Where time comes from.

All policy code reads time through a :class:`Clock` so tests can drive it. The default is the
running event loop's clock (``loop.time()``), which virtual-time test loops fast-forward.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["BoundLoopClock", "Clock", "LoopClock", "ManualClock", "timer_granularity_s"]


def timer_granularity_s(loop: asyncio.AbstractEventLoop) -> float:
    """How far off a timer on ``loop`` can fire from the time it was set for, in seconds.

    uvloop runs on libuv, which keeps its clock and its timers in whole milliseconds (a timer
    for ``t`` was measured firing from 0.7 ms before to 0.85 ms after it): 1 ms. asyncio's own
    loops schedule on ``time.monotonic()`` (nanoseconds), and virtual-time test loops run timers
    exactly when they are due: 0.
    """
    return 1e-3 if type(loop).__module__.partition(".")[0] == "uvloop" else 0.0


class Clock(Protocol):
    """A monotonic clock in seconds."""

    def now_s(self) -> float:
        """The current time in seconds on this clock's (arbitrary) epoch."""
        ...


class LoopClock:
    """The running event loop's clock; must be read from inside the loop."""

    __slots__ = ()

    def now_s(self) -> float:
        """``asyncio.get_running_loop().time()``."""
        return asyncio.get_running_loop().time()


class BoundLoopClock:
    """One given loop's clock: :class:`LoopClock` without looking the loop up on every read.

    The coordinator binds one per query, where the clock is read several times per shard.
    """

    __slots__ = ("_time",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._time = loop.time

    def now_s(self) -> float:
        """``loop.time()`` of the bound loop."""
        return self._time()


class ManualClock:
    """A clock that moves only when told to; for unit tests of pure policies."""

    __slots__ = ("_now_s",)

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now_s(self) -> float:
        """The time set by the last :meth:`advance` or :meth:`set`."""
        return self._now_s

    def advance(self, delta_s: float) -> None:
        """Move forward by ``delta_s`` seconds (never backwards)."""
        if not delta_s >= 0:
            raise ValueError(f"cannot move a clock by {delta_s!r} s")
        self._now_s += delta_s

    def set(self, now_s: float) -> None:
        """Jump to ``now_s`` (never backwards)."""
        if not now_s >= self._now_s:
            raise ValueError(f"cannot move a clock back from {self._now_s} to {now_s}")
        self._now_s = now_s
