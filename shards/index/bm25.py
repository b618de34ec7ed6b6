"""BM25 as Lucene computes it, from corpus-wide statistics.

Why corpus-wide: a shard that scores with its own document count, average length and document
frequencies gives the same document a different score than a single index would, so the merged
top-k of N shards drifts from the single-index top-k (Elasticsearch's default
``query_then_fetch``). The builder counts these statistics over the whole corpus once and writes
them into the manifest; every shard scores with them, so a document scores the same, bit for
bit, on its shard as in one index, and merging needs no extra round trip per query
(``dfs_query_then_fetch`` needs one).

Bit-for-bit: the idf is computed per term in Python floats (``math.log``), and each posting's
impact with element-wise float32 arithmetic (IEEE-rounded, so identical whichever shard or array
position it lands in); a query then adds impacts in one fixed term order on every shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BM25Params", "idf", "impacts"]


@dataclass(frozen=True, slots=True)
class BM25Params:
    """BM25's free parameters; the defaults are Anserini's (k1 = 0.9, b = 0.4).

    ``k1`` (>= 0) sets how fast term frequency saturates; ``b`` (in [0, 1]) how much document
    length normalizes it. Raises :class:`ValueError` outside those ranges or for NaN.
    """

    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"k1 must be a finite number >= 0, got {self.k1!r}")
        if not (math.isfinite(self.b) and 0 <= self.b <= 1):
            raise ValueError(f"b must be in [0, 1], got {self.b!r}")


def idf(doc_freq: int, n_docs: int) -> float:
    """Lucene's BM25 idf, ``log(1 + (N - df + 0.5) / (df + 0.5))``: always > 0."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def impacts(
    tf: npt.NDArray[np.integer],
    doc_len: npt.NDArray[np.integer],
    term_idf: npt.NDArray[np.float32],
    avg_doc_len: float,
    params: BM25Params,
) -> npt.NDArray[np.float32]:
    """Each posting's contribution, ``idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))``.

    ``tf``, ``doc_len`` and ``term_idf`` are aligned per posting (the term's idf repeated over
    its postings). Lucene drops BM25's constant ``(k1 + 1)`` factor; ranking is unchanged and
    scores match Lucene's and ``bm25s``'s ``lucene`` method. Float32 throughout.
    """
    f32 = np.float32
    tf32 = tf.astype(f32)
    norm = f32(params.k1) * (
        f32(1.0 - params.b) + f32(params.b) * (doc_len.astype(f32) / f32(max(avg_doc_len, 1e-9)))
    )
    out: npt.NDArray[np.float32] = (term_idf * (tf32 / (tf32 + norm))).astype(f32, copy=False)
    return out
