"""A BM25 index shard as a :class:`aggregator.backend.ShardBackend`, and opening an index."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from aggregator.deadline import Deadline
from aggregator.errors import ShardTimeout
from aggregator.types import Hit, Query, ShardReply
from shards.index.analyzer import Analyzer, AnalyzerConfig
from shards.index.bm25 import BM25Params
from shards.index.manifest import Manifest
from shards.index.pool import ScoringPool, ShardKey, default_pool, shard_key
from shards.index.postings import Postings, TopK

__all__ = ["IndexShard", "open_index"]


class IndexShard:
    """One shard of a built index, searchable within a deadline.

    The query is analyzed on the caller's thread (microseconds) and scored in ``pool``, off
    the event loop. :meth:`search` raises :class:`ShardTimeout` when the budget is spent
    before or during scoring and :class:`aggregator.errors.ShardRejected` when the pool is
    full; cancellation propagates and stops the scoring at its next block of postings.
    """

    def __init__(
        self,
        postings: Postings,
        *,
        name: str,
        analyzer: AnalyzerConfig,
        pool: ScoringPool | None = None,
        key: ShardKey | None = None,
    ) -> None:
        self.postings = postings
        self._name = name
        self._analyzer_config = analyzer
        self._local = threading.local()
        self._pool = pool
        self._key: ShardKey = key or ("", 0, 0.0, 0.0)

    @property
    def name(self) -> str:
        """The shard's name (``shard-003``)."""
        return self._name

    @property
    def doc_count(self) -> int:
        """Documents in this shard."""
        return self.postings.n_docs

    def analyze(self, text: str) -> list[str]:
        """The index terms of ``text``, with the analyzer the index was built with."""
        analyzer: Analyzer | None = getattr(self._local, "analyzer", None)
        if analyzer is None:  # PyStemmer keeps a cache: one analyzer per thread
            analyzer = self._local.analyzer = Analyzer(self._analyzer_config)
        return analyzer.terms(text)

    def search_terms(self, terms: Sequence[str], k: int) -> list[Hit]:
        """Score analyzed ``terms`` synchronously on this thread (benchmarks, tests)."""
        return self._hits(self.postings.top_k(terms, k))

    async def search(self, query: Query, deadline: Deadline) -> ShardReply:
        """This shard's top ``query.k`` hits by BM25 with corpus-wide statistics."""
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        remaining_s = deadline.remaining_s(started_s)
        if remaining_s <= 0:
            raise ShardTimeout("deadline exceeded before the shard started")
        terms = self.analyze(query.text)
        hits: list[Hit] = []
        if terms:
            pool = self._pool or default_pool()
            top = await pool.top_k(self.postings, self._key, terms, query.k, remaining_s)
            hits = self._hits(top)
        took_ms = (loop.time() - started_s) * 1000.0
        return ShardReply(self._name, self.doc_count, tuple(hits), took_ms)

    def _hits(self, top: TopK) -> list[Hit]:
        ids, titles, name = self.postings.doc_ids, self.postings.titles, self._name
        return [
            Hit(ids[n], float(s), name, titles[n] or None)
            for n, s in zip(top.doc_nos.tolist(), top.scores.tolist(), strict=True)
        ]

    def __repr__(self) -> str:
        return f"IndexShard({self._name!r}, docs={self.doc_count})"


def open_index(
    path: Path,
    *,
    shard_ids: Sequence[int] | None = None,
    pool: ScoringPool | None = None,
    params: BM25Params | None = None,
) -> list[IndexShard]:
    """Open the shards of the index at ``path`` (all of them, or ``shard_ids``).

    Shards are named ``shard-000``, ``shard-001``, ... by their number in the index, so the
    shards of one index opened in several processes keep distinct names. ``pool`` runs the
    scoring (default: the process-wide :func:`shards.index.pool.default_pool`); ``params``
    overrides the manifest's BM25 parameters. Raises :class:`FileNotFoundError` when ``path``
    is not an index and :class:`ValueError` for an unknown shard id, a duplicate one, or a
    damaged or incompatible index.
    """
    path = Path(path)
    manifest = Manifest.read(path)
    chosen = list(range(manifest.n_shards)) if shard_ids is None else list(shard_ids)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"duplicate shard ids in {chosen}")
    for shard_id in chosen:
        if isinstance(shard_id, bool) or not isinstance(shard_id, int):
            raise ValueError(f"shard id must be an integer, got {shard_id!r}")
        if not 0 <= shard_id < manifest.n_shards:
            raise ValueError(
                f"no shard {shard_id} in {path} (it has shards 0..{manifest.n_shards - 1})"
            )
    scoring = params or manifest.bm25
    shards = []
    for shard_id in chosen:
        entry = manifest.shards[shard_id]
        postings = Postings.open(path / entry.dir_name, manifest, scoring)
        if postings.n_docs != entry.doc_count:
            raise ValueError(
                f"{path / entry.dir_name} holds {postings.n_docs} documents, "
                f"the manifest says {entry.doc_count}"
            )
        shards.append(
            IndexShard(
                postings,
                name=entry.dir_name,
                analyzer=manifest.analyzer,
                pool=pool,
                key=shard_key(path.resolve(), shard_id, scoring),
            )
        )
    return shards
