"""The soak benchmark's own arithmetic: recovery windows, descriptor census, settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from bench.histogram import LatencyHistogram
from bench.loadgen import LoadResult, LoadSpec, RequestStatus
from bench.soak import SoakSettings, fd_kinds, machine_ticks, recovery_time_s, steal_share

DEADLINE_MS = 100.0


def _result(
    status: Sequence[int], latency_ms: Sequence[float], rate_per_s: float = 100.0
) -> LoadResult:
    n = len(status)
    spec = LoadSpec(rate_per_s=rate_per_s, duration_s=n / rate_per_s, arrivals="constant")
    return LoadResult(
        spec=spec,
        latency=LatencyHistogram(),
        service=LatencyHistogram(),
        lag=LatencyHistogram(),
        answered=LatencyHistogram(),
        offsets_s=np.arange(n, dtype=np.float64) / rate_per_s,
        latency_s=np.array(latency_ms, dtype=np.float64) / 1000.0,
        status=np.array(status, dtype=np.int8),
        coverage=np.full(n, np.nan),
        server_ms=np.full(n, np.nan),
        service_s=np.full(n, np.nan),
    )


def test_recovery_starts_at_the_first_run_of_good_windows() -> None:
    """Shed for 0.7 s, then served: recovery is 0.7 s."""
    status = [RequestStatus.SHED] * 70 + [RequestStatus.OK] * 130
    assert recovery_time_s(_result(status, [1.0] * 200), DEADLINE_MS) == pytest.approx(0.7)


def test_late_answers_are_not_recovered() -> None:
    """200s past deadline + 10 ms do not count; a short good spell is not a recovery."""
    status = [RequestStatus.OK] * 200
    latency = [150.0] * 100 + [50.0] * 20 + [150.0] * 30 + [50.0] * 50
    assert recovery_time_s(_result(status, latency), DEADLINE_MS) == pytest.approx(1.5)


def test_never_recovered_is_none() -> None:
    """A run that never serves five good windows in a row has no recovery time."""
    status = [RequestStatus.OK, RequestStatus.SHED] * 100
    assert recovery_time_s(_result(status, [1.0] * 200), DEADLINE_MS) is None


def test_fd_census_sees_a_listening_socket() -> None:
    """The descriptor census counts this process's own listening TCP socket."""
    before = fd_kinds(os.getpid(), frozenset())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        after = fd_kinds(os.getpid(), frozenset())
    assert after.get("tcp:LISTEN", 0) == before.get("tcp:LISTEN", 0) + 1
    assert sum(after.values()) == sum(before.values()) + 1


def test_settings_reject_nonsense() -> None:
    """Out-of-range soak settings are refused before anything starts."""
    with pytest.raises(ValueError, match="--overload"):
        SoakSettings(overload_factor=0.5)
    with pytest.raises(ValueError, match="--max-in-flight"):
        SoakSettings(max_in_flight=0)
    assert SoakSettings(max_in_flight=4).limits().max_in_flight == 4
    with pytest.raises(ValueError, match="--shard-priority"):
        SoakSettings(shard_priority="high")


def test_steal_share_is_stolen_ticks_over_all_ticks() -> None:
    """VM steal between two readings is the stolen share of all CPU ticks; no share without
    both readings or without time passing; this machine's reading is well formed."""
    assert steal_share((10, 1000), (35, 2000)) == 0.025
    assert steal_share(None, (35, 2000)) is None
    assert steal_share((10, 1000), (10, 1000)) is None
    reading = machine_ticks()
    if reading is not None:  # Linux
        stolen, total = reading
        assert 0 <= stolen <= total


@pytest.mark.parametrize("priority", ["idle", "low", "normal"])
def test_the_shard_process_is_scheduled_below_the_aggregator(priority: str) -> None:
    """``idle`` puts a child on SCHED_IDLE (niceness 10 where there is none), ``low`` at
    niceness 10, ``normal`` leaves it alone; none needs a privilege."""
    from bench.soak import _deprioritise

    # A child that waits for its stdin to close: alive for exactly as long as the test needs.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        _deprioritise(child.pid, priority)
        nice = os.getpriority(os.PRIO_PROCESS, child.pid)
        has_idle = hasattr(os, "sched_getscheduler") and hasattr(os, "SCHED_IDLE")
        if priority == "idle" and has_idle:
            assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        elif priority in ("idle", "low"):
            assert nice == 10
        else:
            assert nice == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
