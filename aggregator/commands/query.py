"""``python -m aggregator query TEXT``: one query, in process, against simulated shards.

Builds a :func:`shards.sim.simulated_cluster`, runs the query through
:class:`aggregator.Coordinator` on the chosen event loop and prints the ranked hits and a
completeness table, or (``--json``) exactly the object the HTTP service returns.

Exit status: 0 with an answer (complete or partial), 1 when no shard answered, 2 for bad
input (one line on stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator.coordinator import Coordinator, CoordinatorConfig
from aggregator.errors import InvalidQuery, InvalidSpec, NoShardAnswered
from aggregator.types import OutcomeStatus, Query, SearchResponse
from aggregator.wire import dump_json, error_to_dict, response_to_dict

__all__ = ["DEFAULT_DEADLINE_MS", "DEFAULT_SHARDS", "DEFAULT_SHARD_LATENCY", "add_arguments", "run"]

#: Shards in the default simulated cluster.
DEFAULT_SHARDS = 16
#: Default shard latency: median 8 ms, p99 about 32 ms.
DEFAULT_SHARD_LATENCY = "lognormal:median=8ms,sigma=0.6"
#: Default end-to-end budget.
DEFAULT_DEADLINE_MS = 50.0

_STATUS_STYLE = {
    OutcomeStatus.OK: "green",
    OutcomeStatus.TIMEOUT: "yellow",
    OutcomeStatus.ERROR: "red",
    OutcomeStatus.REJECTED: "magenta",
    OutcomeStatus.SKIPPED: "dim",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``query`` subcommand's options."""
    parser.add_argument("text", help="the query text")
    parser.add_argument("-k", type=int, default=10, help="hits to return (default 10)")
    parser.add_argument(
        "--sim-shards",
        type=int,
        default=DEFAULT_SHARDS,
        metavar="N",
        help=f"simulated shards in the cluster (default {DEFAULT_SHARDS})",
    )
    parser.add_argument(
        "--docs-per-shard",
        type=int,
        default=1000,
        metavar="N",
        help="documents in each simulated shard (default 1000)",
    )
    parser.add_argument(
        "--shard-latency",
        default=DEFAULT_SHARD_LATENCY,
        metavar="SPEC",
        help=(
            "every shard's behaviour, e.g. 'lognormal:median=8ms,sigma=0.6;error=0.01;hang=0.001'"
            f" (default {DEFAULT_SHARD_LATENCY})"
        ),
    )
    parser.add_argument(
        "--slow",
        action="append",
        default=[],
        metavar="INDEX:SPEC",
        help="give shard INDEX its own behaviour, e.g. '3:constant:1s' (repeatable)",
    )
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=DEFAULT_DEADLINE_MS,
        metavar="MS",
        help=f"end-to-end budget in milliseconds (default {DEFAULT_DEADLINE_MS:g})",
    )
    parser.add_argument(
        "--min-coverage",
        type=float,
        default=None,
        metavar="C",
        help="answer once this share of documents (0 < C <= 1) answered, plus a grace period",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop (default uvloop)"
    )


def parse_slow(items: Sequence[str], n_shards: int) -> dict[int, str]:
    """``["3:constant:1s", ...]`` as ``{3: "constant:1s"}``.

    Raises :class:`InvalidSpec` for a malformed item, an index outside ``0..n_shards-1``, or
    an index given twice.
    """
    slow: dict[int, str] = {}
    for item in items:
        index_text, sep, spec = item.partition(":")
        try:
            index = int(index_text)
        except ValueError:
            index = -1
            sep = ""
        if not sep or not spec.strip():
            raise InvalidSpec(f"--slow expects INDEX:SPEC, e.g. 3:constant:1s, got {item!r}")
        if not 0 <= index < n_shards:
            raise InvalidSpec(f"--slow index {index} is out of range 0..{n_shards - 1}")
        if index in slow:
            raise InvalidSpec(f"--slow gives shard {index} twice")
        slow[index] = spec
    return slow


def run(args: argparse.Namespace) -> int:
    """Run one query; print the answer. Raises ``InvalidQuery``/``InvalidSpec`` on bad input."""
    # The only place ``aggregator`` uses ``shards``: the CLI wires a local cluster.
    from shards.sim import MAX_DOCS_PER_SHARD, MAX_SIM_SHARDS, simulated_cluster

    deadline_ms: float = args.deadline_ms
    if math.isnan(deadline_ms) or deadline_ms <= 0:
        raise InvalidQuery(f"--deadline-ms must be a positive number, got {deadline_ms!r}")
    query = Query(args.text, k=args.k, deadline_ms=deadline_ms, min_coverage=args.min_coverage)
    if not 1 <= args.sim_shards <= MAX_SIM_SHARDS:
        raise ValueError(f"--sim-shards must be in 1..{MAX_SIM_SHARDS}, got {args.sim_shards}")
    if not 0 <= args.docs_per_shard <= MAX_DOCS_PER_SHARD:
        raise ValueError(
            f"--docs-per-shard must be in 0..{MAX_DOCS_PER_SHARD}, got {args.docs_per_shard}"
        )
    slow = parse_slow(args.slow, args.sim_shards)
    # Built before the loop starts, so bad specs fail fast; the shards' clocks (degradation
    # windows) start at their first call, i.e. with this query.
    shards = simulated_cluster(
        args.sim_shards,
        args.shard_latency,
        seed=args.seed,
        docs_per_shard=args.docs_per_shard,
        slow=slow,
    )

    async def main() -> SearchResponse:
        coordinator = Coordinator(shards, config=CoordinatorConfig(default_deadline_ms=None))
        try:
            return await coordinator.search(query)
        finally:
            await coordinator.aclose()

    try:
        response = run_loop(main, args.loop)
    except NoShardAnswered as exc:
        if args.json:
            sys.stdout.write(dump_json(error_to_dict(exc)).decode() + "\n")
        print(f"python -m aggregator query: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(dump_json(response_to_dict(response)).decode() + "\n")
    else:
        _print_response(response, query)
    return 0


def _print_response(response: SearchResponse, query: Query) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    hits = Table(title=escape(f"top {query.k} for {query.text!r}"), title_justify="left")
    hits.add_column("#", justify="right")
    hits.add_column("document")
    hits.add_column("score", justify="right")
    hits.add_column("shard")
    for rank, hit in enumerate(response.hits, start=1):
        hits.add_row(str(rank), escape(hit.doc_id), f"{hit.score:.6f}", escape(hit.shard))
    console.print(hits)

    shards = Table(title="completeness", title_justify="left")
    shards.add_column("shard")
    shards.add_column("status")
    shards.add_column("latency ms", justify="right")
    shards.add_column("hits", justify="right")
    shards.add_column("reason")
    for outcome in response.shards:
        style = _STATUS_STYLE.get(outcome.status, "")
        shards.add_row(
            escape(outcome.shard),
            f"[{style}]{outcome.status.value}[/]" if style else outcome.status.value,
            f"{outcome.latency_ms:.3f}",
            str(outcome.hits),
            escape(outcome.reason or ""),
        )
    console.print(shards)

    c = response.completeness
    state = "[yellow]partial[/]" if c.partial else "[green]complete[/]"
    budget = "no limit" if response.deadline_ms is None else f"{response.deadline_ms:g} ms"
    console.print(
        f"{state}: {c.shards_ok}/{c.shards_total} shards ok, {c.shards_timed_out} timed out, "
        f"{c.shards_failed} failed, {c.shards_skipped} skipped; coverage {c.coverage:.1%} "
        f"({c.docs_searched}/{c.docs_total} docs); took {response.took_ms:.3f} ms of {budget}"
    )
