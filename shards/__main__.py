"""``python -m shards``: build indexes and serve shards over HTTP."""

from __future__ import annotations

import sys

from aggregator._cli import run_commands

COMMANDS = {
    "serve": ("shards.commands.serve", "serve simulated or index shards over the shard protocol"),
    "build": ("shards.commands.build", "build a sharded BM25 index from a JSON-lines corpus"),
}


def main() -> int:
    """Entry point."""
    return run_commands("python -m shards", "Shard backends for the aggregator.", COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
