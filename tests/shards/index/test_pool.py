"""Scoring pools: bounded admission, deadlines, cancellation, a crashed worker replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from aggregator import Coordinator, Deadline, OutcomeStatus, Query, ShardRejected, ShardTimeout
from shards.index import Manifest, ProcessScoringPool, ThreadScoringPool, build_index, open_index
from shards.index.postings import Expired, Postings, TopK


class _GatedPostings:
    """Stands in for Postings: top_k blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    def top_k(
        self,
        terms: Sequence[str],
        k: int,
        *,
        stop_at_s: float = float("inf"),
        cancelled: threading.Event | None = None,
    ) -> TopK:
        self.started.set()
        self.gate.wait(timeout=10)
        if cancelled is not None and cancelled.is_set():
            self.saw_cancel.set()
            raise Expired("cancelled")
        return TopK(np.zeros(0, dtype=np.intp), np.zeros(0))


_KEY = ("", 0, 0.9, 0.4)


async def _wait_for(event: threading.Event) -> None:
    await asyncio.to_thread(event.wait, 10)


async def test_a_full_pool_sheds_at_once_and_frees_its_slot_after_the_work() -> None:
    """max_pending=1: a second query is rejected while the first runs, admitted after."""
    pool = ThreadScoringPool(max_workers=1, max_pending=1)
    gated = _GatedPostings()
    try:
        first = asyncio.ensure_future(pool.top_k(gated, _KEY, ["x"], 5, 10.0))  # type: ignore[arg-type]
        await _wait_for(gated.started)
        with pytest.raises(ShardRejected, match="scoring pool full"):
            await pool.top_k(gated, _KEY, ["x"], 5, 10.0)  # type: ignore[arg-type]
        gated.gate.set()
        assert len(await first) == 0
        assert pool.pending == 0
    finally:
        gated.gate.set()
        pool.shutdown()


async def test_cancelling_a_query_flags_its_running_job_and_releases_the_slot() -> None:
    """The caller's cancellation propagates; the job sees its cancel flag and ends."""
    pool = ThreadScoringPool(max_workers=1, max_pending=4)
    gated = _GatedPostings()
    try:
        task = asyncio.ensure_future(pool.top_k(gated, _KEY, ["x"], 5, 10.0))  # type: ignore[arg-type]
        await _wait_for(gated.started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gated.gate.set()
        await _wait_for(gated.saw_cancel)
        for _ in range(100):  # the slot is freed by a callback on the loop
            if pool.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.pending == 0
    finally:
        gated.gate.set()
        pool.shutdown()


async def test_no_budget_left_is_a_timeout_without_submitting(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """remaining_s <= 0 raises ShardTimeout and admits nothing."""
    pool = ThreadScoringPool(max_workers=1)
    build_index(tiny_corpus, tmp_path / "idx", 1)
    postings = Postings.open(tmp_path / "idx" / "shard-000", Manifest.read(tmp_path / "idx"))
    try:
        with pytest.raises(ShardTimeout, match="before scoring started"):
            await pool.top_k(postings, _KEY, ["cat"], 5, 0.0)
        with pytest.raises(ShardTimeout, match="scoring stopped"):
            await pool.top_k(postings, _KEY, ["cat"], 5, 1e-9)  # expires before the thread runs
        assert pool.pending == 0
    finally:
        pool.shutdown()


async def test_a_shut_down_pool_rejects(tiny_corpus: Path, tmp_path: Path) -> None:
    """After shutdown, searches get ShardRejected (a rejected outcome), not a hang."""
    pool = ThreadScoringPool(max_workers=1)
    build_index(tiny_corpus, tmp_path / "idx", 2)
    shards = open_index(tmp_path / "idx", pool=pool)
    pool.shutdown()
    loop = asyncio.get_running_loop()
    with pytest.raises(ShardRejected, match="shut down"):
        await shards[0].search(Query("cats"), Deadline.after(loop.time(), 1000))


async def test_a_killed_process_worker_is_replaced_and_its_query_errors(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Kill the worker: the query in flight gets an error outcome, the next one succeeds."""
    pool = ProcessScoringPool(max_workers=1)
    build_index(tiny_corpus, tmp_path / "idx", 1)
    shards = open_index(tmp_path / "idx", pool=pool)
    coordinator = Coordinator(shards)
    try:
        ok = await coordinator.search(Query("cats", k=3, deadline_ms=30_000))
        assert ok.completeness.shards_ok == 1
        for pid in list(pool._executor._processes):  # the test kills it
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception, match=r"no shard answered.*error"):
            await coordinator.search(Query("cats", k=3, deadline_ms=30_000))
        again = await coordinator.search(Query("cats", k=3, deadline_ms=30_000))
        assert again.shards[0].status is OutcomeStatus.OK
        assert [h.doc_id for h in again.hits] == [h.doc_id for h in ok.hits]
        assert pool.replaced == 1
    finally:
        pool.shutdown()
