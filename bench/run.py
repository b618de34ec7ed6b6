"""``python -m bench run SCENARIO.toml``: offer open-loop load to a system, strategy by strategy.

Every run of the scenario (each strategy, at each point of its sweeps) gets the same arrival
schedule and a freshly started system, so strategies are compared side by side under the same
load and the same shard behaviour (a degradation "mid-run" happens at the same moment of
each). Two modes:

``sockets`` (default)
    The system runs in two child processes on 127.0.0.1 (:mod:`bench.serve_system`): the
    simulated shard servers in one, the aggregator's HTTP service in the other, so neither
    shares a CPU with the other or with the load generator in this process; queries and shard
    calls travel over real loopback HTTP. With ``--target URL`` an
    already running aggregator is driven instead, and strategies differ only in the query
    parameters they send (``deadline_ms``, ``min_coverage``).
``virtual``
    The coordinator is called in process on a virtual-time loop (:mod:`bench.virtual`): the
    same policies, timers and cancellations, without waiting for the clock, so thousands of
    shards and a hundred thousand queries run in seconds to minutes. CPU costs are invisible
    there; it measures policies, not implementation speed.

Outputs in ``--out``: ``results.json`` (every figure), ``report.md`` (tables) and PNG plots.
A progress bar runs on stderr; a summary table is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import functools
import math
import os
import platform
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson
from rich.console import Console

from aggregator._cli import LOOP_CHOICES, run_loop
from aggregator.errors import ConfigError
from bench.loadgen import HttpSearchTarget, LoadResult, LoadSpec, run_load
from bench.plots import write_plots
from bench.report import cell_summary, find_knees, make_progress, render_markdown, summary_table
from bench.scenario import MODES, Cell, Scenario, load_scenario
from bench.serve_system import system_argument
from bench.system import build_backends, build_coordinator, coordinator_target
from bench.virtual import run_virtual

__all__ = ["add_arguments", "run", "run_scenario"]

#: How long a system process may take to start listening, in seconds.
SYSTEM_START_TIMEOUT_S = 30.0
#: How long a system process may take to stop once told to, in seconds.
SYSTEM_STOP_TIMEOUT_S = 10.0
#: Connections the load generator keeps to the system (a request over the bound waits for
#: one, and that wait counts in its latency).
HTTP_POOL_SIZE = 256

Progress = Callable[[int, int], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` subcommand's options."""
    parser.add_argument("scenario", type=Path, help="scenario file (TOML)")
    parser.add_argument(
        "--out", type=Path, help="output directory (default: bench-results/NAME-MODE)"
    )
    parser.add_argument(
        "--target", metavar="URL", help="drive a running aggregator (base or /search URL)"
    )
    parser.add_argument("--mode", choices=MODES, help="override the scenario's mode")
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="uvloop", help="event loop in socket mode"
    )
    parser.add_argument("--duration", type=float, metavar="S", help="override [load] duration_s")
    parser.add_argument("--rate", type=float, metavar="QPS", help="override [load] rate_per_s")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def _search_url(target: str) -> str:
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"--target must be an http:// URL, got {target!r}")
    base = target.rstrip("/")
    return base if base.endswith("/search") else base + "/search"


def load_spec(scenario: Scenario, cell: Cell, *, virtual: bool) -> LoadSpec:
    """The load generator's spec for one run."""
    load = scenario.load
    # Sub-millisecond send precision on loops with millisecond timers costs up to spin_s of CPU
    # per request; cap that at 10% of the generator's time.
    spin_s = 0.0 if virtual else min(0.001, 0.1 / cell.rate_per_s)
    return LoadSpec(
        rate_per_s=cell.rate_per_s,
        duration_s=load.duration_s,
        arrivals="constant" if load.arrivals == "constant" else "poisson",
        max_requests=load.max_requests,
        max_inflight=load.max_inflight,
        warmup_s=load.warmup_s,
        drain_s=load.drain_s,
        spin_s=spin_s,
        late_after_s=0.0 if virtual else 0.001,
        seed=load.seed,
    )


# -- virtual mode -----------------------------------------------------------------------------


def run_virtual_cell(scenario: Scenario, cell: Cell, progress: Progress | None) -> LoadResult:
    """One run on a fresh virtual-time loop, the coordinator called in process."""

    async def main() -> LoadResult:
        loop = asyncio.get_running_loop()
        backends = build_backends(scenario.cluster, cell.shards)
        coordinator = build_coordinator(
            backends,
            cell.strategy,
            max_inflight_per_shard=scenario.cluster.max_concurrency,
            seed=scenario.cluster.seed,
        )
        target = coordinator_target(coordinator, cell.strategy, scenario.texts, scenario.k)
        try:
            return await run_load(
                target,
                load_spec(scenario, cell, virtual=True),
                now_s=loop.time,
                on_progress=progress,
            )
        finally:
            await coordinator.aclose(timeout_s=1.0)

    return run_virtual(main)


# -- socket mode ------------------------------------------------------------------------------


class _Child:
    """One system process: started, asked for its first line, stopped by closing stdin."""

    def __init__(self, role: str, argument: str, log: IO[bytes]) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.serve_system", role, argument],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )

    def first_line(self, log_path: Path) -> dict[str, Any]:
        """The JSON line the process prints once it listens."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SYSTEM_START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise ConfigError(
                f"the {self.role} process did not start within {SYSTEM_START_TIMEOUT_S:g} s "
                f"(exit status {self.proc.poll()}); see {log_path}"
            )
        return dict(orjson.loads(line))

    def stop(self) -> dict[str, Any]:
        """Close stdin, wait for the exit, return the counters it printed last."""
        proc = self.proc
        counters: dict[str, Any] = {}
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=SYSTEM_STOP_TIMEOUT_S)  # its last words are one short line
            for raw in proc.stdout.read().splitlines():
                counters.update(orjson.loads(raw).get("counters", {}))
        finally:
            self.kill()
        return counters

    def kill(self) -> None:
        """Make sure the process is gone and its pipes closed."""
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=SYSTEM_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@contextmanager
def system_process(
    scenario: Scenario, cell: Cell, loop: str, log_path: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Start the system for ``cell``: a shard-server process, then an aggregator process in
    front of it. Yield the aggregator's search URL and a dict that receives both processes'
    counters once they stop."""
    counters: dict[str, Any] = {}
    children: list[_Child] = []
    with log_path.open("ab") as log:
        try:
            argument = system_argument(scenario.cluster, cell.shards, cell.strategy, loop)
            shards = _Child("shards", argument, log)
            children.append(shards)
            endpoints = [tuple(e) for e in shards.first_line(log_path)["shards"]]
            argument = system_argument(
                scenario.cluster, cell.shards, cell.strategy, loop, endpoints=endpoints
            )
            aggregator = _Child("aggregator", argument, log)
            children.append(aggregator)
            url = str(aggregator.first_line(log_path)["url"])
            yield url, counters
            # Aggregator first: its in-flight shard calls end before the shards go away.
            for child in reversed(children):
                counters.update(child.stop())
        finally:
            for child in children:
                child.kill()


async def drive_http(
    url: str, scenario: Scenario, cell: Cell, progress: Progress | None
) -> LoadResult:
    """One run against the aggregator's ``/search`` at ``url``."""
    s = cell.strategy
    params = {"k": str(scenario.k), "deadline_ms": f"{s.budget_ms:g}"}
    if s.min_coverage is not None:
        params["min_coverage"] = f"{s.min_coverage:g}"
    timeout_s = s.budget_ms / 1000.0 + 5.0
    async with HttpSearchTarget.open_session(HTTP_POOL_SIZE, timeout_s) as session:
        target = HttpSearchTarget(session, url, scenario.texts, params)
        return await run_load(
            target, load_spec(scenario, cell, virtual=False), on_progress=progress
        )


# -- the command ------------------------------------------------------------------------------


def _machine(loop: str, mode: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loop": "virtual time" if mode == "virtual" else loop,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_scenario(
    scenario: Scenario,
    *,
    mode: str,
    out_dir: Path,
    target: str | None = None,
    loop: str = "uvloop",
    console: Console | None = None,
    plots: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Run every cell of ``scenario``; write ``results.json``, ``report.md`` and plots into
    ``out_dir``; return the results."""
    if mode == "virtual" and target is not None:
        raise ConfigError("--target drives a running service over sockets; drop --mode virtual")
    out_dir.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True, quiet=True)
    started = dt.datetime.now(dt.UTC)
    wall_start = time.perf_counter()
    machine = _machine(loop, mode)
    summaries: list[dict[str, Any]] = []
    cells = scenario.cells()
    url = _search_url(target) if target else None
    with make_progress(console) as bar:
        for cell in cells:
            expected = LoadSpec(
                cell.rate_per_s, scenario.load.duration_s, max_requests=scenario.load.max_requests
            ).expected_requests
            task = bar.add_task(cell.key, total=expected)

            def progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            server: dict[str, Any] = {}
            if mode == "virtual":
                result = run_virtual_cell(scenario, cell, progress)
            elif url is not None:
                drive = functools.partial(drive_http, url, scenario, cell, progress)
                result = run_loop(drive, loop)
            else:
                log_path = out_dir / "system.log"
                with system_process(scenario, cell, loop, log_path) as (system_url, server):
                    drive = functools.partial(drive_http, system_url, scenario, cell, progress)
                    result = run_loop(drive, loop)
            summary = cell_summary(cell, result)
            summary["server"] = server
            summaries.append(summary)
    results: dict[str, Any] = {
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "path": scenario.path,
            "load": dataclasses.asdict(scenario.load),
            "cluster": dataclasses.asdict(scenario.cluster),
            "strategies": [dataclasses.asdict(s) for s in scenario.strategies],
            "sweep": dataclasses.asdict(scenario.sweep),
        },
        "mode": mode,
        "target": url,
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - wall_start, 3),
        "machine": machine,
        "cells": summaries,
    }
    results["knees"] = find_knees(summaries) if scenario.sweep.rate_per_s else []
    log_path = out_dir / "system.log"
    if log_path.exists() and log_path.stat().st_size == 0:
        log_path.unlink()  # nothing went wrong in the system processes
    (out_dir / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    plot_names = write_plots(results, out_dir) if plots else []
    (out_dir / "report.md").write_text(render_markdown(results, plot_names), encoding="utf-8")
    return results


def run(args: argparse.Namespace) -> int:
    """Run the scenario; exit status 0 (a run that did not keep its offered rate is reported
    as such in the table, the report and a warning, since overload scenarios do that on
    purpose)."""
    scenario = load_scenario(args.scenario)
    load = scenario.load
    if args.duration is not None:
        if not (math.isfinite(args.duration) and load.warmup_s < args.duration <= 3600):
            raise ValueError(f"--duration must be in ({load.warmup_s:g}, 3600] s")
        load = dataclasses.replace(load, duration_s=args.duration)
    if args.rate is not None:
        if not (math.isfinite(args.rate) and 0 < args.rate <= 1e6):
            raise ValueError("--rate must be in (0, 1e6]")
        load = dataclasses.replace(load, rate_per_s=args.rate)
    scenario = dataclasses.replace(scenario, load=load)
    mode = args.mode or ("sockets" if args.target else scenario.mode)
    out_dir = args.out or Path("bench-results") / f"{scenario.name}-{mode}"
    console = Console(stderr=True, quiet=args.quiet)
    command = "python -m bench run " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])
    results = run_scenario(
        scenario,
        mode=mode,
        out_dir=out_dir,
        target=args.target,
        loop=args.loop,
        console=console,
        plots=not args.no_plots,
        command=command.strip(),
    )
    if not args.quiet:
        out = Console()
        if not out.is_terminal:
            out = Console(width=170)
        out.print(summary_table(results))
    kept = all(c["kept_rate"] for c in results["cells"])
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.md'}")
    if not kept:
        print(
            "warning: the load generator did not keep the offered rate in every run "
            "(see the report's load generator table)",
            file=sys.stderr,
        )
    return 0
