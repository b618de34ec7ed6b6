"""A sharded BM25 index with corpus-wide statistics, and the built-in stdlib corpus.

Layering (each module imports only those above it):
  analyzer, bm25            text to terms; the scoring formula
  manifest                  on-disk layout, format version, global statistics
  builder                   corpus -> shards + manifest
  postings                  one opened shard and its scoring kernel (pure, synchronous)
  pool                      bounded thread/process executors that run the kernel
  shard                     IndexShard (an aggregator ShardBackend) and open_index
  stdlib                    the built-in corpus and its cached index
Imports ``aggregator`` for the backend protocol, values and errors only.
"""

from __future__ import annotations

from shards.index.analyzer import Analyzer, AnalyzerConfig
from shards.index.bm25 import BM25Params
from shards.index.builder import Document, build_index, build_index_from_documents, shard_of
from shards.index.manifest import FORMAT_VERSION, CorpusStats, Manifest, ShardEntry
from shards.index.pool import ProcessScoringPool, ScoringPool, ThreadScoringPool, default_pool
from shards.index.shard import IndexShard, open_index
from shards.index.stdlib import builtin_index_dir

__all__ = [
    "FORMAT_VERSION",
    "Analyzer",
    "AnalyzerConfig",
    "BM25Params",
    "CorpusStats",
    "Document",
    "IndexShard",
    "Manifest",
    "ProcessScoringPool",
    "ScoringPool",
    "ShardEntry",
    "ThreadScoringPool",
    "build_index",
    "build_index_from_documents",
    "builtin_index_dir",
    "default_pool",
    "open_index",
    "shard_of",
]
