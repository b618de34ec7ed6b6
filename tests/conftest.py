"""Test-wide fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _main_thread_loop() -> Iterator[None]:
    """Own the main thread's default loop and close it at the end of the session.

    pytest-asyncio's policy switch calls ``asyncio.get_event_loop()``, which creates a loop
    when none is set and never closes it (pytest-asyncio issue 724). Setting one ourselves
    means that loop is ours to close, so "unclosed event loop" warnings stay errors that
    point at real leaks.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()
