"""``python -m shards build``: build a sharded BM25 index from a JSON-lines corpus.

Example::

    python -m shards build --corpus ../shared/data/scifact/corpus.jsonl --shards 8 \\
        --out data/scifact-index

Reads BEIR-style lines (``_id`` or ``id``, ``title``, ``text``). A bad line stops the build
with its line number, unless ``--skip-bad-lines`` (then it is skipped and counted). Prints a
one-line summary on stdout; a progress bar on stderr for large inputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shards.index.analyzer import STEMMER_LANGUAGES, STOP_WORD_LISTS, AnalyzerConfig
from shards.index.bm25 import BM25Params
from shards.index.builder import MAX_SHARDS, build_index

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``build`` subcommand's options."""
    parser.add_argument("--corpus", type=Path, required=True, help="JSON-lines corpus file")
    parser.add_argument("--shards", type=int, required=True, help=f"shard count (1..{MAX_SHARDS})")
    parser.add_argument("--out", type=Path, required=True, help="index directory to write")
    parser.add_argument(
        "--skip-bad-lines", action="store_true", help="skip and count bad lines instead of failing"
    )
    analysis = parser.add_argument_group("analyzer")
    analysis.add_argument(
        "--stemmer",
        default="english",
        metavar="NAME",
        help="Snowball stemmer (english, porter, ... or none; default english)",
    )
    analysis.add_argument(
        "--stop-words",
        default="english",
        choices=sorted(STOP_WORD_LISTS),
        help="stop word list (default english)",
    )
    analysis.add_argument(
        "--no-lowercase", action="store_true", help="keep case (default: case-folded)"
    )
    scoring = parser.add_argument_group("scoring defaults recorded in the manifest")
    scoring.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9)")
    scoring.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: for inputs of 4 MiB or more on a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the index; returns 0. Raises ``ValueError``/``OSError`` on bad input."""
    if args.stemmer not in STEMMER_LANGUAGES:
        raise ValueError(f"unknown stemmer {args.stemmer!r}; e.g. english, porter, none")
    if not args.corpus.is_file():
        raise FileNotFoundError(f"corpus {args.corpus} does not exist or is not a file")
    analyzer = AnalyzerConfig(
        lowercase=not args.no_lowercase, stop_words=args.stop_words, stemmer=args.stemmer
    )
    started = time.perf_counter()
    manifest = build_index(
        args.corpus,
        args.out,
        args.shards,
        analyzer=analyzer,
        bm25=BM25Params(args.k1, args.b),
        skip_bad_lines=args.skip_bad_lines,
        progress=args.progress,
    )
    took_s = time.perf_counter() - started
    skipped = f", skipped {manifest.skipped_lines} bad line(s)" if manifest.skipped_lines else ""
    print(
        f"built {args.out}: {manifest.stats.doc_count} documents in {manifest.n_shards} shards, "
        f"{len(manifest.stats.doc_freq)} terms, {took_s:.1f} s{skipped}"
    )
    return 0
