"""Reports of a scenario run: ``results.json`` (every figure), ``report.md`` and the console.

One *cell* is one run: a strategy at one offered rate over one fan-out width. Its figures:
offered, sent and achieved rates; how every request ended (complete, partial, error, shed,
timeout, abandoned, dropped); latency from the intended send time (p50 / p90 / p99 / p99.9 /
max, plus the uncorrected service time for comparison and the generator's own lag);
completeness (coverage percentiles, share of partial answers); extra shard requests from hedges
and retries; and whether the generator kept the offered rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.loadgen import LoadResult, RequestStatus
from bench.scenario import Cell

__all__ = [
    "COVERAGE_PERCENTILES",
    "cell_summary",
    "find_knees",
    "make_progress",
    "render_markdown",
    "summary_table",
    "timeline",
]

#: Low percentiles of coverage reported: "99% of answers covered at least p1".
COVERAGE_PERCENTILES = (50.0, 10.0, 1.0, 0.1)
#: Width of one window of the latency-over-time series, in seconds.
TIMELINE_WINDOW_S = 0.5
#: A rate is past the knee when its p99 exceeds this multiple of the lowest rate's p99.
KNEE_P99_FACTOR = 2.0
#: ... or when this share of measured requests failed, was shed, dropped or abandoned.
KNEE_FAILURE_SHARE = 0.01

_STATUS_NAMES = {
    RequestStatus.OK: "ok",
    RequestStatus.PARTIAL: "partial",
    RequestStatus.ERROR: "error",
    RequestStatus.SHED: "shed",
    RequestStatus.TIMEOUT: "timeout",
    RequestStatus.ABANDONED: "abandoned",
    RequestStatus.DROPPED: "dropped",
}


def _round(value: float, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def timeline(result: LoadResult, window_s: float = TIMELINE_WINDOW_S) -> list[dict[str, Any]]:
    """Latency over time: per window of intended send times, count, p50, p99, max and
    failures (error, shed, timeout, abandoned, dropped). Warm-up included, marked."""
    offsets = result.offsets_s
    if len(offsets) == 0:
        return []
    windows = np.floor(offsets / window_s).astype(np.int64)
    failed = np.isin(
        result.status,
        [
            RequestStatus.ERROR,
            RequestStatus.SHED,
            RequestStatus.TIMEOUT,
            RequestStatus.ABANDONED,
            RequestStatus.DROPPED,
        ],
    )
    out: list[dict[str, Any]] = []
    for w in range(int(windows.max()) + 1):
        mask = windows == w
        lat = result.latency_s[mask]
        lat = lat[~np.isnan(lat)] * 1000.0
        out.append(
            {
                "t_s": round(w * window_s, 3),
                "warmup": bool(w * window_s < result.spec.warmup_s),
                "count": int(mask.sum()),
                "p50_ms": _round(float(np.percentile(lat, 50))) if len(lat) else None,
                "p99_ms": _round(float(np.percentile(lat, 99))) if len(lat) else None,
                "max_ms": _round(float(lat.max())) if len(lat) else None,
                "failed": int((failed & mask).sum()),
            }
        )
    return out


def _coverage(result: LoadResult) -> dict[str, Any]:
    answered = result.measured & np.isin(
        result.status, [RequestStatus.OK, RequestStatus.PARTIAL, RequestStatus.ERROR]
    )
    cov = result.coverage[answered & ~np.isnan(result.coverage)]
    out: dict[str, Any] = {"answers": len(cov)}
    for p in COVERAGE_PERCENTILES:
        out[f"p{p:g}"] = _round(float(np.percentile(cov, p)), 6) if len(cov) else None
    out["min"] = _round(float(cov.min()), 6) if len(cov) else None
    out["mean"] = _round(float(cov.mean()), 6) if len(cov) else None
    return out


def cell_summary(cell: Cell, result: LoadResult) -> dict[str, Any]:
    """Every figure of one run, JSON-ready (``None`` where there is nothing to report)."""
    measured = int(result.measured.sum())
    counts = {name: result.count(status) for status, name in _STATUS_NAMES.items()}
    answers = counts["ok"] + counts["partial"]
    failures = sum(counts[n] for n in ("error", "shed", "timeout", "abandoned", "dropped"))
    s = cell.strategy
    elapsed = result.elapsed_s
    return {
        "key": cell.key,
        "strategy": {
            "name": s.name,
            "kind": s.kind,
            "deadline_ms": s.deadline_ms,
            "min_coverage": s.min_coverage,
            "hedge_after_ms": s.hedge_after_ms,
        },
        "shards": cell.shards,
        "offered_rate_per_s": result.offered_rate_per_s,
        "send_rate_per_s": _round(result.send_rate_per_s, 2),
        "achieved_rate_per_s": _round(result.achieved_rate_per_s, 2),
        "goodput_per_s": _round(
            (
                result.count(RequestStatus.OK, measured_only=False)
                + result.count(RequestStatus.PARTIAL, measured_only=False)
            )
            / elapsed
            if elapsed > 0
            else math.nan,
            2,
        ),
        "kept_rate": result.kept_rate,
        "rate_problems": result.rate_problems(),
        "elapsed_s": _round(elapsed),
        "requests": {
            "scheduled": result.scheduled,
            "measured": measured,
            "sent": result.sent,
            "late_sends": result.late_sends,
            **counts,
        },
        "partial_share": _round(counts["partial"] / answers, 6) if answers else None,
        "failure_share": _round(failures / measured, 6) if measured else None,
        "latency_ms": result.latency.summary().to_dict(),
        "answered_ms": result.answered.summary().to_dict(),
        "service_ms": result.service.summary().to_dict(),
        "lag_ms": result.lag.summary().to_dict(),
        "coverage": _coverage(result),
        "extra_requests": result.extra_requests,
        "extra_per_query": _round(result.extra_requests / measured, 4) if measured else None,
        "reasons": dict(sorted(result.reasons.items(), key=lambda kv: -kv[1])),
        "spectrum": [[_round(p, 5), _round(v)] for p, v in result.latency.spectrum()],
        "timeline": timeline(result),
        "histogram": result.latency.encode(),
    }


def _is_past_knee(cell: Mapping[str, Any], base_p99_ms: float) -> str | None:
    p99 = cell["latency_ms"]["p99_ms"]
    if not cell["kept_rate"]:
        return "generator could not keep the rate"
    if (cell["failure_share"] or 0.0) > KNEE_FAILURE_SHARE:
        return f"{cell['failure_share']:.1%} failed, shed or dropped"
    if p99 is not None and base_p99_ms > 0 and p99 > KNEE_P99_FACTOR * base_p99_ms:
        return f"p99 {p99:g} ms > {KNEE_P99_FACTOR:g}x the lowest rate's {base_p99_ms:g} ms"
    achieved = cell["achieved_rate_per_s"] or 0.0
    if achieved < 0.95 * cell["offered_rate_per_s"]:
        return f"achieved {achieved:g}/s < 95% of offered"
    return None


def find_knees(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each strategy (and width and deadline) swept over offered rate: the highest rate
    before the knee, and why the next rate is past it.

    A rate is past the knee when the generator could not keep it, more than 1% of requests
    failed, were shed, dropped or abandoned, p99 exceeded twice the lowest rate's p99, or the
    achieved rate fell below 95% of the offered rate.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for cell in cells:
        s = cell["strategy"]
        groups.setdefault((s["name"], s["deadline_ms"], cell["shards"]), []).append(cell)
    knees = []
    for (name, deadline_ms, shards), group in groups.items():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda c: c["offered_rate_per_s"])
        base_p99 = group[0]["latency_ms"]["p99_ms"] or 0.0
        knee_rate: float | None = None
        reason = "no knee within the swept rates"
        for cell in group:
            why = _is_past_knee(cell, base_p99)
            if why is not None:
                reason = f"at {cell['offered_rate_per_s']:g}/s: {why}"
                break
            knee_rate = cell["offered_rate_per_s"]
        knees.append(
            {
                "strategy": name,
                "deadline_ms": deadline_ms,
                "shards": shards,
                "highest_good_rate_per_s": knee_rate,
                "reason": reason,
            }
        )
    return knees


# -- console ----------------------------------------------------------------------------------


def make_progress(console: Console | None = None) -> Progress:
    """A progress bar: description, bar, requests done / scheduled, elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return text + suffix
    return f"{value}{suffix}"


_COLUMNS = (
    ("run", lambda c: c["key"]),
    ("offered/s", lambda c: _fmt(c["offered_rate_per_s"])),
    ("achieved/s", lambda c: _fmt(c["achieved_rate_per_s"])),
    ("p50 ms", lambda c: _fmt(c["latency_ms"]["p50_ms"])),
    ("p90 ms", lambda c: _fmt(c["latency_ms"]["p90_ms"])),
    ("p99 ms", lambda c: _fmt(c["latency_ms"]["p99_ms"])),
    ("p99.9 ms", lambda c: _fmt(c["latency_ms"]["p999_ms"])),
    ("max ms", lambda c: _fmt(c["latency_ms"]["max_ms"])),
    ("partial", lambda c: _pct(c["partial_share"])),
    ("cov p1", lambda c: _fmt(c["coverage"]["p1"])),
    ("err+shed", lambda c: str(_failed(c))),
    ("extra/q", lambda c: _fmt(c["extra_per_query"])),
    ("kept rate", lambda c: "yes" if c["kept_rate"] else "NO"),
)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _failed(cell: Mapping[str, Any]) -> int:
    r = cell["requests"]
    return int(r["error"] + r["shed"] + r["timeout"] + r["abandoned"] + r["dropped"])


def summary_table(results: Mapping[str, Any]) -> Table:
    """The end-of-run table: one row per run."""
    table = Table(title=f"{results['scenario']['name']} ({results['mode']})", show_lines=False)
    for name, _ in _COLUMNS:
        table.add_column(name, justify="left" if name == "run" else "right")
    for cell in results["cells"]:
        table.add_row(*(fn(cell) for _, fn in _COLUMNS))
    return table


# -- markdown ---------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _load(load_average: Sequence[float] | None) -> str:
    if not load_average:
        return "unknown"
    return " / ".join(f"{x:.2f}" for x in load_average) + " (1 / 5 / 15 min)"


def _per_query_ms(cell: Mapping[str, Any], key: str) -> str:
    cpu_s = cell["server"].get(key)
    sent = cell["requests"]["sent"]
    if cpu_s is None or not sent:
        return "-"
    return _fmt(1000.0 * cpu_s / sent)


def render_markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md``: what ran, the latency table, completeness, rate keeping, knees, plots."""
    sc = results["scenario"]
    cells = results["cells"]
    out = [
        f"# Scenario `{sc['name']}` ({results['mode']} mode)",
        "",
        sc["description"] or "",
        "",
        f"Command: `{results['command']}`  ",
        f"Started {results['started_at']}, took {results['elapsed_s']:.1f} s; "
        f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
        f"loop {results['machine']['loop']}, load average at start "
        f"{_load(results['machine'].get('load_average'))}.  ",
        f"Load: {sc['load']['arrivals']} arrivals, {sc['load']['duration_s']:g} s per run "
        f"({sc['load']['warmup_s']:g} s warm-up not reported), at most "
        f"{sc['load']['max_inflight']} in flight (beyond: dropped and counted). "
        "Latency is measured from each request's intended send time.",
        "",
        "## Latency (ms, from intended send time)",
        "",
        "Every request counts, however it ended; the last three columns count answers only "
        "(complete or partial), since fast failures would otherwise flatter the figures.",
        "",
        _md_table(
            [
                "run",
                "offered/s",
                "achieved/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "measured",
                "answers",
                "answers p50",
                "answers p99",
            ],
            (
                [
                    c["key"],
                    _fmt(c["offered_rate_per_s"]),
                    _fmt(c["achieved_rate_per_s"]),
                    *(
                        _fmt(c["latency_ms"][k])
                        for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")
                    ),
                    str(c["requests"]["measured"]),
                    str(c["answered_ms"]["count"]),
                    _fmt(c["answered_ms"]["p50_ms"]),
                    _fmt(c["answered_ms"]["p99_ms"]),
                ]
                for c in cells
            ),
        ),
        "",
        "## Completeness, failures and extra load",
        "",
        _md_table(
            [
                "run",
                "ok",
                "partial",
                "partial share",
                "cov p50",
                "cov p10",
                "cov p1",
                "cov p0.1",
                "error",
                "shed",
                "timeout",
                "abandoned",
                "extra req/query",
            ],
            (
                [
                    c["key"],
                    str(c["requests"]["ok"]),
                    str(c["requests"]["partial"]),
                    _pct(c["partial_share"]),
                    *(_fmt(c["coverage"][k]) for k in ("p50", "p10", "p1", "p0.1")),
                    *(str(c["requests"][k]) for k in ("error", "shed", "timeout", "abandoned")),
                    _fmt(c["extra_per_query"]),
                ]
                for c in cells
            ),
        ),
        "",
        "Coverage columns are low percentiles: `cov p1` is the coverage that 99% of answers "
        "reached or beat.",
        "",
        "## The load generator",
        "",
        _md_table(
            [
                "run",
                "sent/s",
                "late sends",
                "dropped",
                "lag p99 ms",
                "lag max ms",
                "service p99 ms (uncorrected)",
                "kept rate",
            ],
            (
                [
                    c["key"],
                    _fmt(c["send_rate_per_s"]),
                    str(c["requests"]["late_sends"]),
                    str(c["requests"]["dropped"]),
                    _fmt(c["lag_ms"]["p99_ms"]),
                    _fmt(c["lag_ms"]["max_ms"]),
                    _fmt(c["service_ms"]["p99_ms"]),
                    "yes" if c["kept_rate"] else "NO: " + "; ".join(c["rate_problems"]),
                ]
                for c in cells
            ),
        ),
    ]
    served = [c for c in cells if c.get("server")]
    if served:
        out += [
            "",
            "## The system under test (socket mode)",
            "",
            "CPU per query is the CPU time each process used while serving, divided by the "
            "queries sent (warm-up included).",
            "",
            _md_table(
                [
                    "run",
                    "aggregator CPU ms/query",
                    "shards CPU ms/query",
                    "shard requests",
                    "shard 429s",
                    "shard timeouts",
                    "shard errors",
                ],
                (
                    [
                        c["key"],
                        _per_query_ms(c, "aggregator_cpu_s"),
                        _per_query_ms(c, "shards_cpu_s"),
                        *(
                            str(c["server"].get(k, "-"))
                            for k in (
                                "shard_requests_served",
                                "shard_requests_shed",
                                "shard_requests_timed_out",
                                "shard_requests_failed",
                            )
                        ),
                    ]
                    for c in served
                ),
            ),
        ]
    knees = results.get("knees") or []
    if knees:
        out += [
            "",
            "## Knee of the offered-load sweep",
            "",
            _md_table(
                ["strategy", "deadline ms", "shards", "highest good rate/s", "past the knee"],
                (
                    [
                        k["strategy"],
                        _fmt(k["deadline_ms"]),
                        str(k["shards"]),
                        _fmt(k["highest_good_rate_per_s"]),
                        k["reason"],
                    ]
                    for k in knees
                ),
            ),
        ]
    reasons = [(c["key"], c["reasons"]) for c in cells if c["reasons"]]
    if reasons:
        out += ["", "## Failure reasons", ""]
        for key, by_reason in reasons:
            listed = ", ".join(f"{n} x {r}" for r, n in list(by_reason.items())[:5])
            out.append(f"- {key}: {listed}")
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"
