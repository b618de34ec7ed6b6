"""``python -m aggregator``: query a local simulated cluster, or serve the HTTP API."""

from __future__ import annotations

import sys

from aggregator._cli import run_commands

COMMANDS = {
    "query": ("aggregator.commands.query", "run one query in process against simulated shards"),
    "serve": ("aggregator.commands.serve", "serve the HTTP search API"),
}


def main() -> int:
    """Entry point."""
    return run_commands("python -m aggregator", "Fan-out/fan-in search aggregator.", COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
