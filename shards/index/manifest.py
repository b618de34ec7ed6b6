"""The manifest: what an index directory holds and the statistics every shard scores with.

Layout of an index directory (format version :data:`FORMAT_VERSION`)::

    manifest.json          this file: format version, analyzer, shard list, global statistics
    shard-000/
      indptr.npy           int64[terms + 1]  CSR row pointers: term t's postings are
                           doc_idx[indptr[t]:indptr[t+1]] and tf[...] (doc_idx ascending)
      doc_idx.npy          int32[postings]   shard-local document numbers
      tf.npy               int32[postings]   term frequency in that document
      doc_len.npy          int32[docs]       document length in terms
      terms.json           the shard's vocabulary; term id = position
      docs.json            {"ids": [...], "titles": [...]}; ids sorted (str order)

Shard-local document numbers follow the ids' string order, so breaking score ties by document
number is breaking them by id, as :func:`aggregator.merge.rank_key` does. Arrays are plain
``.npy`` so they open with ``mmap_mode="r"``: opening is quick and the page cache is shared by
every process that serves the index.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.index.analyzer import AnalyzerConfig
from shards.index.bm25 import BM25Params

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CorpusStats",
    "Manifest",
    "ShardEntry",
    "shard_dir_name",
]

#: Bump when the on-disk layout or the meaning of a field changes; readers refuse other versions.
FORMAT_VERSION = 1
#: The manifest's file name inside an index directory.
MANIFEST_NAME = "manifest.json"


def shard_dir_name(shard_id: int) -> str:
    """The directory name of shard ``shard_id`` (``shard-007``)."""
    return f"shard-{shard_id:03d}"


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One shard: its number, document count and total length in terms."""

    shard_id: int
    doc_count: int
    token_count: int

    def __post_init__(self) -> None:
        if self.shard_id < 0 or self.doc_count < 0 or self.token_count < 0:
            raise ValueError(f"shard entry has a negative field: {self!r}")

    @property
    def dir_name(self) -> str:
        """This shard's directory name."""
        return shard_dir_name(self.shard_id)


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """Corpus-wide statistics: documents, total length, document frequency of every term."""

    doc_count: int
    token_count: int
    doc_freq: Mapping[str, int] = field(repr=False)

    def __post_init__(self) -> None:
        if self.doc_count < 0 or self.token_count < 0:
            raise ValueError("corpus statistics must not be negative")

    @property
    def avg_doc_len(self) -> float:
        """Average document length in terms (0.0 for an empty corpus)."""
        return self.token_count / self.doc_count if self.doc_count else 0.0


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything needed to open and score an index, as written next to its shards.

    ``bm25`` holds the scoring defaults the index was built for (a reader may override them:
    impacts are computed when a shard is opened, from term frequencies and lengths).
    """

    analyzer: AnalyzerConfig
    bm25: BM25Params
    shards: tuple[ShardEntry, ...]
    stats: CorpusStats
    skipped_lines: int = 0
    source: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"index format version {self.format_version} is not supported "
                f"(this program reads version {FORMAT_VERSION}); rebuild the index"
            )
        ids = [s.shard_id for s in self.shards]
        if ids != list(range(len(ids))) or not ids:
            raise ValueError(f"shard ids must be 0..N-1 with N >= 1, got {ids}")
        docs = sum(s.doc_count for s in self.shards)
        if docs != self.stats.doc_count:
            raise ValueError(f"shards hold {docs} documents, statistics say {self.stats.doc_count}")

    @property
    def n_shards(self) -> int:
        """How many shards the index has."""
        return len(self.shards)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data."""
        return {
            "format_version": self.format_version,
            "source": self.source,
            "skipped_lines": self.skipped_lines,
            "analyzer": self.analyzer.to_dict(),
            "bm25": {"k1": self.bm25.k1, "b": self.bm25.b},
            "shards": [
                {"shard_id": s.shard_id, "doc_count": s.doc_count, "token_count": s.token_count}
                for s in self.shards
            ],
            "stats": {
                "doc_count": self.stats.doc_count,
                "token_count": self.stats.token_count,
                "avg_doc_len": self.stats.avg_doc_len,
                "doc_freq": dict(self.stats.doc_freq),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse manifest data; raises :class:`ValueError` naming what is wrong."""
        try:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"index format version {version} is not supported (this program reads "
                    f"version {FORMAT_VERSION}); rebuild the index"
                )
            stats = data["stats"]
            doc_freq = {str(t): int(n) for t, n in stats["doc_freq"].items()}
            return cls(
                analyzer=AnalyzerConfig.from_dict(data["analyzer"]),
                bm25=BM25Params(float(data["bm25"]["k1"]), float(data["bm25"]["b"])),
                shards=tuple(
                    ShardEntry(int(s["shard_id"]), int(s["doc_count"]), int(s["token_count"]))
                    for s in data["shards"]
                ),
                stats=CorpusStats(int(stats["doc_count"]), int(stats["token_count"]), doc_freq),
                skipped_lines=int(data.get("skipped_lines", 0)),
                source=str(data.get("source", "")),
                format_version=version,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed manifest: missing or invalid field {exc}") from exc

    def write(self, index_dir: Path) -> Path:
        """Write ``manifest.json`` into ``index_dir``; returns its path."""
        path = index_dir / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")))
        return path

    @classmethod
    def read(cls, index_dir: Path) -> Manifest:
        """Read the manifest of ``index_dir``.

        Raises :class:`FileNotFoundError` if there is none (not an index directory) and
        :class:`ValueError` if it is malformed or of another format version.
        """
        path = index_dir / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{index_dir} is not an index directory (no {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data)
