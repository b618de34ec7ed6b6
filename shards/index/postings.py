"""One shard's postings opened for scoring, and the scoring kernel.

Pure, synchronous code with no event loop in sight: it runs in a worker thread or process.
It reads time only to honour a stop instant on the ``time.monotonic`` clock that the caller
derived from the query's deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from shards.index.bm25 import BM25Params, idf, impacts
from shards.index.manifest import Manifest

__all__ = ["POSTINGS_BLOCK", "Expired", "Postings", "TopK"]

#: Postings scored between two checks of the stop instant (about 0.1 ms of work); queries
#: with fewer postings in all are scored in one pass.
POSTINGS_BLOCK = 1 << 16


class Expired(Exception):
    """Scoring stopped because its stop instant passed or its caller gave up."""


@dataclass(frozen=True, slots=True)
class TopK:
    """A shard's best documents: shard-local numbers and scores, best first."""

    doc_nos: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.doc_nos)


class Postings:
    """A shard's inverted index with BM25 impacts precomputed from global statistics.

    ``doc_ids[i]`` and ``titles[i]`` describe shard-local document ``i``; numbers follow the
    ids' string order. Safe to share between threads: scoring only reads.
    """

    __slots__ = ("_doc_idx", "_impacts", "_spans", "doc_ids", "n_docs", "titles")

    def __init__(
        self,
        *,
        terms: Sequence[str],
        indptr: npt.NDArray[np.int64],
        doc_idx: npt.NDArray[np.int32],
        term_freq: npt.NDArray[np.int32],
        doc_len: npt.NDArray[np.int32],
        doc_ids: Sequence[str],
        titles: Sequence[str],
        manifest: Manifest,
        params: BM25Params,
    ) -> None:
        if len(indptr) != len(terms) + 1 or len(doc_idx) != len(term_freq):
            raise ValueError("postings arrays do not match the vocabulary")
        if len(doc_len) != len(doc_ids) or len(titles) != len(doc_ids):
            raise ValueError("document arrays do not match the document list")
        stats = manifest.stats
        df = stats.doc_freq
        try:
            term_idf = np.array([idf(df[t], stats.doc_count) for t in terms], dtype=np.float32)
        except KeyError as exc:
            raise ValueError(f"term {exc} is missing from the manifest's statistics") from exc
        per_posting_idf = np.repeat(term_idf, np.diff(indptr))
        self._impacts = impacts(
            term_freq, doc_len[doc_idx], per_posting_idf, stats.avg_doc_len, params
        )
        bounds = np.asarray(indptr).tolist()
        # term -> (first, last + 1) posting: one dict probe per query term, no array lookups.
        self._spans = {t: (bounds[i], bounds[i + 1]) for i, t in enumerate(terms)}
        # Plain ndarray views of the memory maps: np.memmap's Python-level __getitem__ costs
        # microseconds per slice, more than the scoring of a short posting list.
        self._doc_idx = np.asarray(doc_idx)
        self.doc_ids = list(doc_ids)
        self.titles = list(titles)
        self.n_docs = len(self.doc_ids)

    @classmethod
    def open(
        cls, shard_dir: Path, manifest: Manifest, params: BM25Params | None = None
    ) -> Postings:
        """Open the shard stored in ``shard_dir`` (arrays memory-mapped).

        Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` for files
        that do not fit together or do not fit the manifest.
        """

        def load(name: str) -> npt.NDArray[np.generic]:
            path = shard_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: the index is incomplete")
            array: npt.NDArray[np.generic] = np.load(path, mmap_mode="r", allow_pickle=False)
            return array

        try:
            terms = json.loads((shard_dir / "terms.json").read_text("utf-8"))
            docs = json.loads((shard_dir / "docs.json").read_text("utf-8"))
            doc_ids, titles = docs["ids"], docs["titles"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{shard_dir}: malformed shard metadata ({exc})") from exc
        return cls(
            terms=terms,
            indptr=load("indptr.npy").astype(np.int64, copy=False),
            doc_idx=load("doc_idx.npy").astype(np.int32, copy=False),
            term_freq=load("tf.npy").astype(np.int32, copy=False),
            doc_len=load("doc_len.npy").astype(np.int32, copy=False),
            doc_ids=doc_ids,
            titles=titles,
            manifest=manifest,
            params=params or manifest.bm25,
        )

    @property
    def n_terms(self) -> int:
        """Distinct terms in this shard."""
        return len(self._spans)

    def top_k(
        self,
        terms: Sequence[str],
        k: int,
        *,
        stop_at_s: float = float("inf"),
        cancelled: threading.Event | None = None,
    ) -> TopK:
        """The ``k`` best documents for analyzed query ``terms``, best first.

        Score ties are broken by document number, i.e. by id. Only documents matching at
        least one term are returned. Raises :class:`Expired` once ``time.monotonic()`` reaches
        ``stop_at_s`` or ``cancelled`` is set (checked before work and between blocks of
        :data:`POSTINGS_BLOCK` postings), so a query out of budget frees its worker.
        """
        # Why sorted distinct terms, each weighted by its query count: every shard (and a
        # single index) then adds a document's impacts in the same order, so its sum is
        # identical everywhere and the merged top-k equals the single-index top-k.
        distinct = sorted(set(terms))
        counts = Counter(terms) if len(distinct) != len(terms) else None
        doc_blocks: list[npt.NDArray[np.int32]] = []
        weight_blocks: list[npt.NDArray[np.float32]] = []
        total = 0
        spans = self._spans
        for term in distinct:
            _check(stop_at_s, cancelled)
            span = spans.get(term)
            if span is None:
                continue
            start, end = span
            weights = self._impacts[start:end]
            if counts is not None and counts[term] != 1:
                weights = weights * np.float32(counts[term])
            doc_blocks.append(self._doc_idx[start:end])
            weight_blocks.append(weights)
            total += end - start
        _check(stop_at_s, cancelled)
        scores: npt.NDArray[np.float64]
        if total <= POSTINGS_BLOCK:
            # One bincount adds every posting in array order (term order) into float64
            # accumulators: the same sums, bit for bit, as the blockwise loop below.
            if not doc_blocks:
                return _select(np.zeros(self.n_docs), k)
            summed = np.bincount(
                np.concatenate(doc_blocks),
                weights=np.concatenate(weight_blocks),
                minlength=self.n_docs,
            )
            scores = cast("npt.NDArray[np.float64]", summed)
        else:
            scores = np.zeros(self.n_docs)
            for docs, weights in zip(doc_blocks, weight_blocks, strict=True):
                for lo in range(0, len(docs), POSTINGS_BLOCK):
                    _check(stop_at_s, cancelled)
                    hi = lo + POSTINGS_BLOCK
                    # Document numbers are distinct within one term's postings, so plain
                    # fancy-index addition is exact (no np.add.at needed).
                    scores[docs[lo:hi]] += weights[lo:hi].astype(np.float64)
            _check(stop_at_s, cancelled)
        return _select(scores, k)


def _check(stop_at_s: float, cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise Expired("cancelled")
    if time.monotonic() >= stop_at_s:
        raise Expired("deadline passed")


# Why threshold, then stable sort: partition finds the k-th best score in O(n); keeping
# every document at least that good (ties included) and sorting them stably by descending
# score leaves equal scores in ascending document number (= id) order, matching the global
# merge order exactly even when ties straddle the k-th place. Unmatched documents score 0.
def _select(scores: npt.NDArray[np.float64], k: int) -> TopK:
    n = len(scores)
    kth = np.partition(scores, n - k)[n - k] if n > k else 0.0
    matched = np.flatnonzero(scores >= kth if kth > 0 else scores > 0)
    matched_scores = scores[matched]
    order = np.argsort(-matched_scores, kind="stable")[:k]
    return TopK(matched[order], matched_scores[order])
