"""Trust the instrument: the load generator against a real loopback server, on wall time.

These are the few tests where wall time is inherent (they measure the measuring tool). They
keep runs short (a few seconds), bound every request loop, and assert one-sided or generous
bounds so a noisy 2-core machine does not make them flaky.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import uvloop

from bench.loadgen import (
    HttpSearchTarget,
    LoadResult,
    LoadSpec,
    RequestResult,
    RequestStatus,
    run_load,
)

SERVER = Path(__file__).with_name("_sleep_server.py")
KNOWN_LATENCY_MS = 50.0


@pytest.fixture
def sleep_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server answering every request after 50 ms, in its own process."""
    with subprocess.Popen(
        [sys.executable, str(SERVER), str(KNOWN_LATENCY_MS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("http://127.0.0.1:")
            yield url, proc
        finally:
            os.kill(proc.pid, signal.SIGCONT)  # in case a test left it stopped
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _drive(
    url: str, spec: LoadSpec, stall: tuple[float, float] | None = None, pid: int = 0
) -> LoadResult:
    """Run ``spec`` against ``url`` on uvloop; optionally SIGSTOP the server ``stall[0]`` s in
    for ``stall[1]`` s."""

    async def main() -> LoadResult:
        loop = asyncio.get_running_loop()
        if stall is not None:
            at_s, for_s = stall
            loop.call_later(at_s, os.kill, pid, signal.SIGSTOP)
            loop.call_later(at_s + for_s, os.kill, pid, signal.SIGCONT)
        async with HttpSearchTarget.open_session(pool_size=256, timeout_s=10.0) as session:
            target = HttpSearchTarget(session, url, ["known latency"])
            return await run_load(target, spec)

    # As the bench commands do before measuring: the heap this test process built so far
    # (hundreds of earlier tests) is moved out of the collector's reach, so a full collection
    # cannot stall the generator mid-run; it is handed back afterwards.
    gc.collect()
    gc.freeze()
    try:
        return uvloop.run(main())
    finally:
        gc.unfreeze()


def _ideal_client_ms(url: str) -> float:
    """Median latency of 25 sequential requests by a plain client (one at a time, 20 ms
    apart): the server's time plus what loopback HTTP and waking idle processes cost on this
    machine right now, with nothing of the generator in the way."""

    async def main() -> float:
        samples = []
        async with aiohttp.ClientSession() as session:
            for _ in range(25):
                start = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                samples.append((time.perf_counter() - start) * 1000.0)
                await asyncio.sleep(0.02)
        return float(np.median(samples[5:]))

    return uvloop.run(main())


def test_known_latency_is_reported_within_1ms_at_p50_and_10pct_at_p99(
    sleep_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Against a server that answers in 50 ms, p50 is within 1 ms and p99 within 10%.

    A client can only ever see the server's 50 ms plus the loopback round trip (a fraction
    of a millisecond on a quiet machine; more on a busy or virtualised one, where idle
    processes wake late). That reference is measured in the same test by a plain
    one-at-a-time client, and the generator must match it; it must also never report less
    than the server's 50 ms. Noise from other processes can only add latency, so the best of
    up to three short runs is judged: a biased generator fails all three.
    """
    url, _ = sleep_server
    spec = LoadSpec(rate_per_s=50, duration_s=3.0, warmup_s=0.5, arrivals="constant", spin_s=0.001)
    seen = []
    for _ in range(3):
        known_ms = _ideal_client_ms(url)
        result = _drive(url, spec)
        summary = result.latency.summary()
        assert result.count(RequestStatus.OK) == summary.count >= 120
        assert result.dropped == 0
        # Never below the server's own time: the generator does not under-report.
        assert summary.min_ms >= KNOWN_LATENCY_MS - 0.05
        seen.append((round(known_ms, 3), summary.p50_ms, summary.p99_ms))
        # Judged against the plain client measured just now, not against a fixed 50 ms: on a
        # loaded CI machine the loopback round trip alone has been seen at 2.4 ms, which no
        # generator can remove (a CI run failed on an absolute "p50 <= 52 ms" bound with the
        # generator 0.09 ms from the plain client).
        if abs(summary.p50_ms - known_ms) <= 1.0 and summary.p99_ms <= known_ms * 1.1:
            break
    else:
        pytest.fail(f"(ideal client, p50, p99) ms of three runs: {seen}")


def test_a_one_second_server_stall_shows_in_the_tail(
    sleep_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """A 1 s stall of the server mid-run lands in p99, p99.9 and max, not hidden (wrk2's ^Z)."""
    url, proc = sleep_server
    spec = LoadSpec(rate_per_s=100, duration_s=3.0, warmup_s=0.2, arrivals="constant")
    result = _drive(url, spec, stall=(1.2, 1.0), pid=proc.pid)
    summary = result.latency.summary()
    # About 100 requests were intended during the stall: each waited out the rest of it.
    assert summary.max_ms >= 900.0
    assert summary.p999_ms >= 900.0
    assert summary.p99_ms >= 800.0
    assert summary.p90_ms >= 300.0
    stalled = (result.latency_s > 0.5).sum()
    assert stalled >= 30
    # The generator kept sending on schedule during the stall: it was the server that stalled.
    assert result.dropped == 0
    assert result.lag.percentile_ms(99.0) < 100.0, result.lag.summary()


def test_generator_lag_is_measured_and_a_missed_rate_is_reported() -> None:
    """When the generator's own loop is blocked, its lag is measured, counted in latency, and
    the run says it did not keep the offered rate."""
    blocked = False

    async def target(index: int) -> RequestResult:
        nonlocal blocked
        if index == 20 and not blocked:
            blocked = True
            # Block the generator's loop for 60 ms (a CPU hog sharing its process).
            end = time.perf_counter() + 0.060
            while time.perf_counter() < end:
                pass
        return RequestResult(RequestStatus.OK, coverage=1.0)

    async def main() -> LoadResult:
        spec = LoadSpec(rate_per_s=400, duration_s=0.5, arrivals="constant", max_lag_s=0.010)
        return await run_load(target, spec)

    result = uvloop.run(main())
    assert result.lag.max_ms >= 50.0
    assert result.late_sends >= 10
    assert not result.kept_rate
    assert any("lag" in problem for problem in result.rate_problems())
    # A late send's latency counts from when it should have gone, so it includes the lag.
    assert result.latency.max_ms >= 40.0
