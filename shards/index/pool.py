"""Bounded executors that run BM25 scoring off the event loop.

Why threads by default, by measurement (``python -m bench index``, SciFact in 8 shards, one
query at a time on one pinned core of the 2-core machine; figures in ``bench/RESULTS.md``):
scoring one shard takes p50 0.09 ms (p99 0.17 ms) of numpy work; a full ``IndexShard.search``
through this thread pool costs p50 0.26 ms (p99 0.49 ms), through a process pool p50 0.75 ms
(p99 1.0 ms; 5.5 ms in another run). The process hop pickles the query and the result and
crosses a pipe twice, several times the work itself, and every worker must hold the index too.
Threads share the index, numpy releases the GIL inside its array loops, and a worker thread
cannot crash the way a process can (a Python exception in it becomes the query's ``error``
outcome; the thread lives on). :class:`ProcessScoringPool` remains for corpora whose queries
are heavy enough to need more than one core of Python: a worker that dies is replaced and every
query it held gets an ``error`` outcome, never a hang.

Both pools are bounded twice: ``max_workers`` threads or processes, and at most
``max_pending`` queries admitted (running or queued). Overflow policy: shed, raising
:class:`aggregator.errors.ShardRejected` at once (outcome ``rejected``) rather than queue
work that would only time out. A query with no budget left is never submitted
(:class:`aggregator.errors.ShardTimeout`), and one whose stop instant passes while it waits or
runs stops at the next block of postings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

from aggregator.errors import ShardError, ShardRejected, ShardTimeout
from shards.index.bm25 import BM25Params
from shards.index.manifest import Manifest, shard_dir_name
from shards.index.postings import Expired, Postings, TopK

__all__ = [
    "DEFAULT_MAX_PENDING",
    "ProcessScoringPool",
    "ScoringPool",
    "ShardKey",
    "ThreadScoringPool",
    "default_pool",
    "shard_key",
]

#: Queries a pool admits at once (running plus queued) before it sheds.
DEFAULT_MAX_PENDING = 256


# A shard as a process worker finds it: index directory, shard number, scoring parameters.
ShardKey = tuple[str, int, float, float]


def shard_key(index_dir: Path, shard_id: int, params: BM25Params) -> ShardKey:
    """The picklable handle a process worker opens a shard by."""
    return (str(index_dir), shard_id, params.k1, params.b)


class ScoringPool(Protocol):
    """Runs :meth:`Postings.top_k` for a shard somewhere other than the event loop."""

    async def top_k(
        self,
        postings: Postings,
        shard_key: ShardKey,
        terms: Sequence[str],
        k: int,
        remaining_s: float,
    ) -> TopK:
        """Score ``terms`` on one shard with ``remaining_s`` seconds of budget.

        Raises :class:`ShardTimeout` when the budget runs out, :class:`ShardRejected` when the
        pool is full and :class:`ShardError` when the worker failed.
        """
        ...

    def shutdown(self) -> None:
        """Stop the workers; queries in flight fail, later ones are rejected."""
        ...


class _Slots:
    """A non-blocking counter of admitted queries (thread-safe, loop-independent)."""

    __slots__ = ("_lock", "_used", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_pending must be >= 1, got {limit}")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def release(self, _: object = None) -> None:
        with self._lock:
            self._used -= 1

    @property
    def in_use(self) -> int:
        return self._used


async def _run(executor: cf.Executor, job: Callable[[], TopK], slots: _Slots) -> TopK:
    """Run ``job`` in ``executor`` holding one of ``slots`` until the job really ends.

    Why shield: cancelling the caller must not cancel the executor's future, or a query still
    queued would vanish without releasing its slot; instead the job runs, sees its cancel flag
    or stop instant at once and ends, and the slot is freed when the executor is done with it.
    ``loop.run_in_executor`` (rather than ``executor.submit``) lets virtual-time test loops
    see the pending work.
    """
    loop = asyncio.get_running_loop()
    try:
        fut = loop.run_in_executor(executor, job)
    except cf.BrokenExecutor:  # never admitted; the caller replaces the pool
        slots.release()
        raise
    except RuntimeError as exc:  # submitted after shutdown
        slots.release()
        raise ShardRejected("scoring pool is shut down") from exc
    fut.add_done_callback(_settle(slots))
    return await asyncio.shield(fut)


def _settle(slots: _Slots) -> Callable[[asyncio.Future[TopK]], None]:
    def done(fut: asyncio.Future[TopK]) -> None:
        slots.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: an abandoned query's error is not an unhandled one

    return done


def _admit(slots: _Slots, remaining_s: float) -> None:
    if remaining_s <= 0:
        raise ShardTimeout("deadline exceeded before scoring started")
    if not slots.try_acquire():
        raise ShardRejected(f"scoring pool full ({slots.limit} queries admitted)")


class ThreadScoringPool:
    """Scoring in a bounded pool of threads (the default; see the module docstring)."""

    def __init__(self, max_workers: int | None = None, max_pending: int = DEFAULT_MAX_PENDING):
        workers = max_workers or min(4, os.cpu_count() or 1)
        self._executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="bm25")
        self._slots = _Slots(max_pending)
        self.max_workers = workers

    @property
    def pending(self) -> int:
        """Queries admitted and not finished."""
        return self._slots.in_use

    async def top_k(
        self,
        postings: Postings,
        shard_key: ShardKey,
        terms: Sequence[str],
        k: int,
        remaining_s: float,
    ) -> TopK:
        """See :meth:`ScoringPool.top_k`."""
        _admit(self._slots, remaining_s)
        stop_at_s = time.monotonic() + remaining_s
        cancelled = threading.Event()
        job = functools.partial(postings.top_k, terms, k, stop_at_s=stop_at_s, cancelled=cancelled)
        try:
            return await _run(self._executor, job, self._slots)
        except Expired as exc:
            raise ShardTimeout(f"scoring stopped: {exc}") from exc
        except BaseException:
            cancelled.set()  # a running or queued query stops at its next check
            raise

    def shutdown(self) -> None:
        """See :meth:`ScoringPool.shutdown`."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- process workers --------------------------------------------------------------------------

_worker_shards: dict[ShardKey, Postings] = {}


def _worker_top_k(key: ShardKey, terms: Sequence[str], k: int, remaining_s: float) -> TopK:
    # time.monotonic is system-wide on the platforms we run on, but a relative budget is
    # robust even where it is not.
    stop_at_s = time.monotonic() + remaining_s
    postings = _worker_shards.get(key)
    if postings is None:
        index_dir, shard_id, k1, b = key
        path = Path(index_dir)
        postings = Postings.open(
            path / shard_dir_name(shard_id), Manifest.read(path), BM25Params(k1, b)
        )
        _worker_shards[key] = postings
    return postings.top_k(terms, k, stop_at_s=stop_at_s)


class ProcessScoringPool:
    """Scoring in a bounded pool of processes; a dead worker is replaced.

    Each worker opens the shards it is asked about once (memory-mapped, so the page cache is
    shared). When a worker dies, every query the pool held fails with :class:`ShardError`
    and the pool is rebuilt for the next query.
    """

    def __init__(self, max_workers: int | None = None, max_pending: int = DEFAULT_MAX_PENDING):
        self.max_workers = max_workers or min(4, os.cpu_count() or 1)
        self._slots = _Slots(max_pending)
        self._lock = threading.Lock()
        self._executor = self._new_executor()
        self._closed = False
        self.replaced = 0

    def _new_executor(self) -> cf.ProcessPoolExecutor:
        import multiprocessing

        # forkserver/spawn: forking a process that runs an event loop and threads is unsafe.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
        context = multiprocessing.get_context(method)
        return cf.ProcessPoolExecutor(self.max_workers, mp_context=context)

    def _replace(self, broken: cf.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken and not self._closed:
                self._executor = self._new_executor()
                self.replaced += 1
        broken.shutdown(wait=False, cancel_futures=True)

    async def top_k(
        self,
        postings: Postings,
        shard_key: ShardKey,
        terms: Sequence[str],
        k: int,
        remaining_s: float,
    ) -> TopK:
        """See :meth:`ScoringPool.top_k`."""
        _admit(self._slots, remaining_s)
        executor = self._executor
        job = functools.partial(_worker_top_k, shard_key, list(terms), k, remaining_s)
        try:
            return await _run(executor, job, self._slots)
        except Expired as exc:
            raise ShardTimeout(f"scoring stopped: {exc}") from exc
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise ShardError("scoring worker died; pool replaced") from exc

    def shutdown(self) -> None:
        """See :meth:`ScoringPool.shutdown`."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


_default_pool: ThreadScoringPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ThreadScoringPool:
    """The process-wide thread pool shards use unless given another (created on first use)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = ThreadScoringPool()
        return _default_pool
