"""Child processes a benchmark runs its servers in, so the load generator does not share a
loop (or a GIL) with the system it measures."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["ChildProcesses"]

#: How long a child may take to report that it is serving.
START_TIMEOUT_S = 60.0


class ChildProcesses:
    """Server processes of one measurement, each talking to us over a pipe; closing ends them.

    A child is started as ``target(*args, conn)``; it sends one message once it serves (its
    URLs, say) and shuts down when it sees the pipe close.
    """

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._conns: list[Connection] = []

    def start(self, target: Callable[..., None], *args: Any) -> tuple[Connection, Any]:
        """Start ``target(*args, conn)``; return our end and its first message.

        Raises :class:`RuntimeError` when the child dies or says nothing within
        :data:`START_TIMEOUT_S`.
        """
        mine, theirs = self._context.Pipe()
        process = self._context.Process(target=target, args=(*args, theirs), daemon=True)
        process.start()
        theirs.close()
        self._processes.append(process)
        self._conns.append(mine)
        if not mine.poll(START_TIMEOUT_S) or not process.is_alive():
            raise RuntimeError("a benchmark server process failed to start")
        return mine, mine.recv()

    def close(self) -> None:
        """Close every pipe (the children shut down), then wait; kill a child that hangs."""
        for conn in reversed(self._conns):
            conn.close()
        for process in reversed(self._processes):
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
