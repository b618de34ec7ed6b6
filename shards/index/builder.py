"""Building a sharded index: read documents, partition them, count global statistics, write.

One pass over the corpus: each document goes to the shard chosen by a stable hash of its id,
is analyzed once, and adds to its shard's postings and to the corpus-wide counts (documents,
total length, document frequency per term) that every shard later scores with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from shards.index.analyzer import Analyzer, AnalyzerConfig
from shards.index.bm25 import BM25Params
from shards.index.manifest import (
    MANIFEST_NAME,
    CorpusStats,
    Manifest,
    ShardEntry,
    shard_dir_name,
)

__all__ = [
    "MAX_SHARDS",
    "Document",
    "build_index",
    "build_index_from_documents",
    "read_corpus",
    "shard_of",
]

#: Most shards an index may have.
MAX_SHARDS = 1024
#: Inputs at least this large (bytes) show a progress bar when stderr is a terminal.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024
#: Longest document id accepted, in characters.
MAX_ID_CHARS = 512


@dataclass(frozen=True, slots=True)
class Document:
    """One document to index: a unique id, a title and body text (both may be empty)."""

    doc_id: str
    title: str = ""
    text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.doc_id, str) or not self.doc_id:
            raise ValueError("document id must be a non-empty string")
        if len(self.doc_id) > MAX_ID_CHARS:
            raise ValueError(f"document id is longer than {MAX_ID_CHARS} characters")
        if not isinstance(self.title, str) or not isinstance(self.text, str):
            raise ValueError("title and text must be strings")


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard a document id belongs to, in ``0..n_shards-1``.

    Stable across processes, machines and Python versions (BLAKE2b of the UTF-8 id), unlike
    ``hash()``, which is salted per process.
    """
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def _parse_line(line: str | bytes) -> Document:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.get("_id", obj.get("id"))
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id:
        raise ValueError('missing or empty document id ("_id" or "id")')
    title, text = obj.get("title") or "", obj.get("text") or ""
    if not isinstance(title, str):
        raise ValueError(f'"title" must be a string, got {type(title).__name__}')
    if not isinstance(text, str):
        raise ValueError(f'"text" must be a string, got {type(text).__name__}')
    return Document(raw_id, title, text)


def read_corpus(
    lines: Iterable[str | bytes],
    *,
    source: str = "<corpus>",
    skip_bad_lines: bool = False,
    on_skip: Callable[[int, str], None] | None = None,
) -> Iterator[Document]:
    """Documents from BEIR-style JSON lines (``_id`` or ``id``, ``title``, ``text``).

    Blank lines are ignored. A bad line (not JSON, not an object, no id, wrong types, a
    duplicate id) raises :class:`ValueError` naming ``source`` and the 1-based line number, or,
    with ``skip_bad_lines``, is reported to ``on_skip(line_no, reason)`` and skipped.
    """
    seen: set[str] = set()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = _parse_line(line)
            if doc.doc_id in seen:
                raise ValueError(f"duplicate document id {doc.doc_id!r}")
        except ValueError as exc:
            if not skip_bad_lines:
                raise ValueError(f"{source}: line {line_no}: {exc}") from None
            if on_skip is not None:
                on_skip(line_no, str(exc))
            continue
        seen.add(doc.doc_id)
        yield doc


class _ShardBuilder:
    """Accumulates one shard's documents and postings in compact arrays."""

    __slots__ = ("doc_ids", "doc_len", "post_doc", "post_term", "post_tf", "titles", "vocab")

    def __init__(self) -> None:
        self.doc_ids: list[str] = []
        self.titles: list[str] = []
        self.doc_len = array("i")
        self.vocab: dict[str, int] = {}
        self.post_term = array("i")
        self.post_doc = array("i")
        self.post_tf = array("i")

    def add(self, doc: Document, counts: Counter[str], length: int) -> None:
        doc_no = len(self.doc_ids)
        self.doc_ids.append(doc.doc_id)
        self.titles.append(doc.title)
        self.doc_len.append(length)
        vocab = self.vocab
        for term, tf in counts.items():
            term_id = vocab.setdefault(term, len(vocab))
            self.post_term.append(term_id)
            self.post_doc.append(doc_no)
            self.post_tf.append(tf)

    # Why renumber: documents are numbered in id order and terms in string order, so ties
    # break by id without a lookup and the files are byte-identical for the same corpus
    # whatever the input order.
    def write(self, shard_dir: Path) -> None:
        shard_dir.mkdir()
        doc_order = sorted(range(len(self.doc_ids)), key=self.doc_ids.__getitem__)
        new_doc = np.empty(len(doc_order), dtype=np.int32)
        new_doc[np.asarray(doc_order, dtype=np.int64)] = np.arange(len(doc_order), dtype=np.int32)
        terms = sorted(self.vocab)
        new_term = np.empty(len(terms), dtype=np.int32)
        for rank, term in enumerate(terms):
            new_term[self.vocab[term]] = rank
        post_term = new_term[np.frombuffer(self.post_term, dtype=np.int32)]
        post_doc = new_doc[np.frombuffer(self.post_doc, dtype=np.int32)]
        post_tf = np.frombuffer(self.post_tf, dtype=np.int32)
        order = np.lexsort((post_doc, post_term))
        counts = np.bincount(post_term, minlength=len(terms))
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        doc_len = np.frombuffer(self.doc_len, dtype=np.int32)
        np.save(shard_dir / "indptr.npy", indptr)
        np.save(shard_dir / "doc_idx.npy", post_doc[order].astype(np.int32))
        np.save(shard_dir / "tf.npy", post_tf[order].astype(np.int32))
        np.save(shard_dir / "doc_len.npy", doc_len[np.asarray(doc_order, dtype=np.int64)])
        _write_json(shard_dir / "terms.json", terms)
        _write_json(
            shard_dir / "docs.json",
            {
                "ids": [self.doc_ids[i] for i in doc_order],
                "titles": [self.titles[i] for i in doc_order],
            },
        )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), "utf-8")


def _check_out_dir(out: Path) -> None:
    if out.exists() and not (out / MANIFEST_NAME).is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise ValueError(f"{out} exists and is not an index directory; refusing to overwrite")


def build_index_from_documents(
    documents: Iterable[Document],
    out: Path,
    n_shards: int,
    *,
    analyzer: AnalyzerConfig | None = None,
    bm25: BM25Params | None = None,
    source: str = "",
    skipped_lines: Callable[[], int] = lambda: 0,
) -> Manifest:
    """Index ``documents`` into ``n_shards`` shards under ``out``; returns the manifest.

    The index is written to a temporary sibling directory and moved into place at the end,
    so a failed build leaves no half-written index. An existing index at ``out`` is
    replaced; any other non-empty ``out`` raises :class:`ValueError`, as do a bad shard count
    and a duplicate document id.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, int):
        raise ValueError(f"shard count must be an integer, got {n_shards!r}")
    if not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"shard count must be in 1..{MAX_SHARDS}, got {n_shards}")
    out = Path(out)
    _check_out_dir(out)
    config = analyzer or AnalyzerConfig()
    text_analyzer = Analyzer(config)
    builders = [_ShardBuilder() for _ in range(n_shards)]
    doc_freq: Counter[str] = Counter()
    token_count = 0
    seen: set[str] = set()
    for doc in documents:
        if doc.doc_id in seen:
            raise ValueError(f"duplicate document id {doc.doc_id!r}")
        seen.add(doc.doc_id)
        # Anserini's "flat" field: title and text indexed together.
        terms = text_analyzer.terms(f"{doc.title}\n{doc.text}" if doc.title else doc.text)
        counts = Counter(terms)
        doc_freq.update(counts.keys())
        token_count += len(terms)
        builders[shard_of(doc.doc_id, n_shards)].add(doc, counts, len(terms))

    entries = tuple(
        ShardEntry(i, len(b.doc_ids), int(sum(b.doc_len))) for i, b in enumerate(builders)
    )
    manifest = Manifest(
        analyzer=config,
        bm25=bm25 or BM25Params(),
        shards=entries,
        stats=CorpusStats(len(seen), token_count, dict(sorted(doc_freq.items()))),
        skipped_lines=skipped_lines(),
        source=source,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for i, builder in enumerate(builders):
            builder.write(tmp / shard_dir_name(i))
        manifest.write(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(new: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)


def build_index(
    corpus: Path,
    out: Path,
    n_shards: int,
    *,
    analyzer: AnalyzerConfig | None = None,
    bm25: BM25Params | None = None,
    skip_bad_lines: bool = False,
    progress: bool | None = None,
) -> Manifest:
    """Build an index of the JSON-lines file ``corpus`` into ``out`` with ``n_shards`` shards.

    A bad line raises :class:`ValueError` naming its line number; with ``skip_bad_lines`` it
    is skipped and counted in :attr:`Manifest.skipped_lines`. ``progress`` shows a progress
    bar on stderr (``None``: only for inputs of 4 MiB or more when stderr is a terminal).
    Raises :class:`FileNotFoundError` when ``corpus`` does not exist.
    """
    corpus = Path(corpus)
    size = corpus.stat().st_size
    show = progress if progress is not None else size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
    skipped = 0

    def on_skip(line_no: int, reason: str) -> None:
        nonlocal skipped
        skipped += 1

    with corpus.open("rb") as fh:
        lines: Iterable[bytes] = _progress_lines(fh, size) if show else fh
        docs = read_corpus(
            lines, source=str(corpus), skip_bad_lines=skip_bad_lines, on_skip=on_skip
        )
        return build_index_from_documents(
            docs,
            out,
            n_shards,
            analyzer=analyzer,
            bm25=bm25,
            source=corpus.name,
            skipped_lines=lambda: skipped,
        )


def _progress_lines(fh: IO[bytes], size: int) -> Iterator[bytes]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("indexing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("indexing", total=size)
        done = 0
        for line in fh:
            done += len(line)
            if done - bar.tasks[0].completed >= 1 << 20:
                bar.update(task, completed=done)
            yield line
        bar.update(task, completed=size)
