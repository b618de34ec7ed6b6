"""``python -m shards serve``: serve simulated or BM25 index shards over the shard protocol.

One server per shard on consecutive ports from ``--base-port`` (0: ephemeral ports), bound to
``--host`` (loopback unless told otherwise). Prints one line per shard on stdout,
``NAME URL DOCS``, once every server listens, so scripts can read the addresses; then serves
until SIGINT or SIGTERM, lets in-flight searches finish (each is bounded by its deadline, and
the drain by one second), and exits 0.

Examples::

    python -m shards serve --sim 8 --latency 'lognormal:median=8ms,sigma=0.6' --seed 1
    python -m shards serve --sim 8 --slow 3:constant:1s --base-port 9100
    python -m shards serve --index data/scifact-index --shard 0 --shard 1
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator._runtime import freeze_startup_heap
from aggregator.backend import ShardBackend
from aggregator.commands.query import DEFAULT_SHARD_LATENCY, parse_slow
from aggregator.errors import ConfigError
from shards.local_cluster import LocalShardCluster
from shards.server import DEFAULT_MAX_CONCURRENCY

__all__ = ["DEFAULT_BASE_PORT", "add_arguments", "run"]

#: First port of the servers; shard ``i`` listens on ``base + i``.
DEFAULT_BASE_PORT = 9100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sim", type=int, metavar="N", help="serve N simulated shards")
    source.add_argument("--index", type=Path, metavar="DIR", help="serve the shards of an index")
    parser.add_argument(
        "--latency",
        default=DEFAULT_SHARD_LATENCY,
        metavar="SPEC",
        help=f"simulated shards' behaviour (default {DEFAULT_SHARD_LATENCY})",
    )
    parser.add_argument(
        "--slow",
        action="append",
        default=[],
        metavar="INDEX:SPEC",
        help="give simulated shard INDEX its own behaviour, e.g. '3:constant:1s' (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument(
        "--docs-per-shard",
        type=int,
        default=1000,
        metavar="D",
        help="documents per simulated shard (default 1000)",
    )
    parser.add_argument(
        "--shard",
        type=int,
        action="append",
        default=None,
        metavar="I",
        help="with --index, serve only shard I (repeatable; default: every shard)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="PORT",
        help=f"port of the first shard; the rest follow (default {DEFAULT_BASE_PORT}; 0: any)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="C",
        help=f"searches per shard at once before 429 (default {DEFAULT_MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop (default uvloop)"
    )


def _backend_factory(args: argparse.Namespace) -> Callable[[], Sequence[ShardBackend]]:
    """Validate the options now; return what builds the backends inside the loop."""
    if args.sim is not None:
        if args.shard:
            raise ConfigError("--shard selects index shards; it needs --index, not --sim")
        from shards.sim import simulated_cluster

        slow = parse_slow(args.slow, args.sim)

        def build() -> Sequence[ShardBackend]:
            return simulated_cluster(
                args.sim,
                args.latency,
                seed=args.seed,
                docs_per_shard=args.docs_per_shard,
                slow=slow,
            )

        # Build once outside the loop so a bad spec or count fails before anything binds.
        simulated_cluster(args.sim, args.latency, seed=args.seed, docs_per_shard=1, slow=slow)
        return build
    if args.slow:
        raise ConfigError("--slow applies to simulated shards; it needs --sim")
    from shards.index import open_index

    index_shards = open_index(args.index, shard_ids=args.shard)
    return lambda: index_shards


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return 0. Raises ``ConfigError``/``OSError`` on bad input."""
    if not 0 <= args.base_port <= 65535:
        raise ConfigError(f"--base-port must be in 0..65535, got {args.base_port}")
    if args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    build = _backend_factory(args)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt
                pass
        cluster = LocalShardCluster(
            build(),
            host=args.host,
            base_port=args.base_port,
            max_concurrency=args.max_concurrency,
        )
        async with cluster:
            # Start-up is done: keep full collections from walking the long-lived heap.
            freeze_startup_heap()
            for endpoint in cluster.endpoints:
                print(f"{endpoint.name} {endpoint.url} {endpoint.doc_count}", flush=True)
            print(f"serving {len(cluster)} shard(s); Ctrl-C to stop", file=sys.stderr, flush=True)
            await stop.wait()
            print("stopping: draining in-flight searches", file=sys.stderr, flush=True)
        return 0

    try:
        return run_loop(main, args.loop)
    finally:
        if args.index is not None:
            from shards.index.pool import default_pool

            default_pool().shutdown()
