"""``python -m bench``: benchmarks, each a subcommand in its own module."""

from __future__ import annotations

import sys

from aggregator._cli import run_commands

COMMANDS = {
    "overhead": ("bench.overhead", "coordinator overhead and deadline overrun, in process"),
    "http": ("bench.http", "HTTP aggregator vs a naive gather peer over loopback"),
    "quality": ("bench.quality", "retrieval quality (nDCG@10, Recall@100) against coverage"),
    "index": ("bench.index_speed", "BM25 index speed against bm25s"),
    "tail-at-scale": ("bench.tail_at_scale", "hedging and wait-for-all in virtual time"),
    "tail-sockets": ("bench.tail_sockets", "replicas, hedging and breakers over loopback"),
    "run": ("bench.run", "run a scenario file: open-loop load, strategies, reports, plots"),
    "soak": ("bench.soak", "overload soak: shedding, memory, leaks, recovery"),
    "model": ("bench.model", "strategies as a vectorised model: 1,000 shards x 100,000 queries"),
}


def main() -> int:
    """Entry point."""
    return run_commands("python -m bench", "Benchmarks of the aggregator.", COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
