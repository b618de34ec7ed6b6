"""Virtual time: an asyncio event loop whose clock jumps to the next timer instead of sleeping.

Policy studies at scale (a thousand shards, a hundred thousand queries) need the coordinator's
real code, timers and cancellation, but not the wall-clock wait: every ``asyncio.sleep``,
``asyncio.wait(timeout=...)`` and ``loop.call_at`` still runs in order, only the idle gaps
between them take no time. The coordinator reads ``loop.time()``, so it sees virtual time.

Why our own loop rather than ``looptime``'s: looptime spins 42 no-op loop cycles before every
jump of the clock (to let chains of awaits settle), which dominates the cost of a run with
millions of timers. The jump here happens only when the loop has nothing ready to run, which is
exactly the moment a real loop would block in ``select``.

CPU time spent in callbacks is invisible on this clock: virtual mode measures the policy (who
waits for whom), never the implementation's speed. Use socket mode for that.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock that starts at ``start_s`` seconds.

    ``time()`` returns the virtual clock. When the loop would block waiting for its next timer,
    the clock jumps to that timer instead. Real I/O still works (it is polled without
    blocking), but a loop that waits for I/O with no timer pending would wait forever, so that
    raises :class:`RuntimeError` ("nothing left to run").
    """

    def __init__(self, start_s: float = 0.0) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now_s = float(start_s)
        self.jumps = 0
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready: list[tuple[selectors.SelectorKey, int]] = real_select(0)
            if ready or timeout == 0:
                return ready
            if timeout is None:
                raise RuntimeError(
                    "virtual time loop has nothing left to run: every task waits for I/O or "
                    "for a future nobody will complete"
                )
            # The loop computed ``timeout`` as (next timer - now): jump there. asyncio then
            # runs every timer due within its clock resolution, so float rounding cannot stall.
            self._virtual_now_s += timeout
            self.jumps += 1
            return ready

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        """The virtual clock in seconds."""
        return self._virtual_now_s


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]], start_s: float = 0.0) -> T:
    """Run ``main()`` to completion on a fresh :class:`VirtualTimeLoop` and close it."""
    loop = VirtualTimeLoop(start_s)
    try:
        return loop.run_until_complete(main())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
