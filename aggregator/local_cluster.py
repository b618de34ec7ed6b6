"""The built-in local cluster that ``python -m aggregator serve`` runs without ``--config``.

The one place where ``aggregator`` imports ``shards``: the command line wires a demo cluster
so that one command gives a working search service. Shards are served over HTTP on loopback
ephemeral ports (:class:`shards.local_cluster.LocalShardCluster`) and reached through the same
:class:`~aggregator.client.HttpShard` path a configured cluster uses.

What is served: the BM25 index of the running Python's standard library documentation
(:func:`shards.index.builtin_index_dir`, built and cached on first use), or, when that index
cannot be built or opened here, simulated shards with seeded latencies; a log line says
which and why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from aggregator.backend import ShardBackend

__all__ = [
    "BUILTIN_INDEX_SHARDS",
    "BUILTIN_SIM_LATENCY",
    "BUILTIN_SIM_SHARDS",
    "BuiltinCluster",
    "BuiltinShard",
    "start_builtin_cluster",
]

logger = logging.getLogger(__name__)

#: Shards of the built-in stdlib index.
BUILTIN_INDEX_SHARDS = 4
#: Shards of the simulated fallback cluster.
BUILTIN_SIM_SHARDS = 8
#: Latency of each simulated fallback shard: a few ms, with a light tail.
BUILTIN_SIM_LATENCY = "lognormal:median=3ms,sigma=0.5"


@dataclass(frozen=True, slots=True)
class BuiltinShard:
    """One served shard: its name, base URL and document count."""

    name: str
    url: str
    doc_count: int


@dataclass(frozen=True, slots=True)
class BuiltinCluster:
    """What the built-in cluster serves: its shards and a one-line description."""

    shards: tuple[BuiltinShard, ...]
    description: str


@asynccontextmanager
async def start_builtin_cluster(
    *,
    host: str = "127.0.0.1",
    use_index: bool = True,
    seed: int = 0,
) -> AsyncIterator[BuiltinCluster]:
    """Serve the built-in cluster on ``host`` for the duration of the ``async with`` block.

    ``use_index=False`` skips the stdlib index and serves simulated shards at once. Closing
    stops the shard servers and the scoring threads. Raises ``OSError`` if the servers cannot
    listen.
    """
    async with AsyncExitStack() as stack:
        backends: Sequence[ShardBackend] | None = None
        description = ""
        if use_index:
            opened = await _open_stdlib_index()
            if opened is not None:
                backends, shutdown = opened
                stack.callback(shutdown)
                docs = sum(b.doc_count for b in backends)
                description = (
                    f"built-in: Python {_python_version()} stdlib docs, BM25, "
                    f"{len(backends)} shards, {docs} documents"
                )
        if backends is None:
            from shards.sim import simulated_cluster

            backends = simulated_cluster(
                BUILTIN_SIM_SHARDS, BUILTIN_SIM_LATENCY, seed=seed, docs_per_shard=10_000
            )
            description = (
                f"built-in: {len(backends)} simulated shards ({BUILTIN_SIM_LATENCY}, seed {seed})"
            )
        from shards.local_cluster import LocalShardCluster

        cluster = await stack.enter_async_context(LocalShardCluster(backends, host=host))
        shards = tuple(BuiltinShard(e.name, e.url, e.doc_count) for e in cluster.endpoints)
        yield BuiltinCluster(shards, description)


async def _open_stdlib_index() -> tuple[Sequence[ShardBackend], Callable[[], None]] | None:
    """The stdlib index's shards and a function that stops their scoring threads; ``None``
    (with a log line saying why) when the index is not available here."""
    try:
        from shards.index import ThreadScoringPool, builtin_index_dir, open_index
    except ImportError as exc:
        logger.warning("built-in index unavailable (%s); serving simulated shards", exc)
        return None
    try:
        # Building gathers documentation in a child process and takes seconds the first time:
        # keep it off the event loop.
        index_dir = await asyncio.to_thread(builtin_index_dir, BUILTIN_INDEX_SHARDS)
        pool = ThreadScoringPool()
        try:
            shards = await asyncio.to_thread(open_index, index_dir, pool=pool)
        except BaseException:
            pool.shutdown()
            raise
    except Exception as exc:  # any failure here only means "fall back"
        logger.warning(
            "built-in stdlib index unavailable (%s: %s); serving simulated shards",
            type(exc).__name__,
            exc,
        )
        return None
    return shards, pool.shutdown


def _python_version() -> str:
    import sys

    return ".".join(str(v) for v in sys.version_info[:3])
