"""Plots of a scenario run (matplotlib, Agg backend: no display needed).

- ``spectrum.png``: the latency percentile spectrum of each run, HdrHistogram style: the x
  axis is ``1 / (1 - percentile)`` on a log scale, so p50, p90, p99, p99.9 are evenly spaced
  and the tail gets as much room as the body; latency on a log scale.
- ``coverage.png``: coverage against deadline: mean and 1st-percentile (worst 1%) coverage
  of the answers for each strategy at each deadline it ran with.
- ``timeline.png``: latency over time: p99 (solid) and max (dotted) per half-second window of
  intended send time, so a stall or a degradation shows where it happened.
- ``load.png`` (rate sweeps only): p50 and p99 against offered rate, to find the knee.
- ``width.png`` (fan-out sweeps only): p50 and p99 against the number of shards.

Figures are small (about 7 x 4 inches at 80 dpi) so they can be committed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

__all__ = ["MAX_LINES", "pick_cells", "write_plots"]

#: Most lines drawn in one figure; with more runs, only those at the scenario's base point.
MAX_LINES = 10
_DPI = 80
_SIZE = (7.5, 4.2)
_SPECTRUM_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _label(cell: Mapping[str, Any], varying: Sequence[str]) -> str:
    s = cell["strategy"]
    parts = [s["name"]]
    if "deadline_ms" in varying and s["deadline_ms"] is not None:
        parts.append(f"{s['deadline_ms']:g} ms")
    if "rate_per_s" in varying:
        parts.append(f"{cell['offered_rate_per_s']:g}/s")
    if "shards" in varying:
        parts.append(f"{cell['shards']} shards")
    return " ".join(parts)


def pick_cells(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runs worth a line each: all of them if few, else one per strategy at the
    scenario's base rate, width and deadline (or the first swept value of each)."""
    cells: list[Mapping[str, Any]] = list(results["cells"])
    if len(cells) <= MAX_LINES:
        return cells
    sc = results["scenario"]
    sweep = sc["sweep"]
    rate = sc["load"]["rate_per_s"]
    if sweep["rate_per_s"] and rate not in sweep["rate_per_s"]:
        rate = sweep["rate_per_s"][0]
    width = sc["cluster"]["shards"]
    if sweep["shards"] and width not in sweep["shards"]:
        width = sweep["shards"][0]
    picked = []
    seen: set[str] = set()
    for cell in cells:
        name = cell["strategy"]["name"]
        if cell["offered_rate_per_s"] == rate and cell["shards"] == width and name not in seen:
            seen.add(name)
            picked.append(cell)
    return picked[:MAX_LINES] or cells[:MAX_LINES]


def _varying(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    if len({c["strategy"]["deadline_ms"] for c in cells}) > 1:
        out.append("deadline_ms")
    if len({c["offered_rate_per_s"] for c in cells}) > 1:
        out.append("rate_per_s")
    if len({c["shards"] for c in cells}) > 1:
        out.append("shards")
    return out


def _log_y(ax: Axes) -> None:
    """A log-scale y axis labelled in plain numbers (1, 2, 3, 5, 10, 20...)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))


def _legend(ax: Axes, **kwargs: Any) -> None:
    """A legend, if anything drawn has a label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _figure(title: str) -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path.name


def _spectrum(results: Mapping[str, Any], path: Path) -> str | None:
    cells = pick_cells(results)
    if not any(c["spectrum"] for c in cells):
        return None
    varying = _varying(cells)
    fig, ax = _figure(f"{results['scenario']['name']}: latency by percentile")
    top = 1.0
    for cell in cells:
        points = [(p, v) for p, v in cell["spectrum"] if p is not None and v is not None]
        if not points:
            continue
        # 1 / (1 - p): p50 -> 2, p99 -> 100; the max (p100) is drawn at one decade past the
        # last finite point so it stays visible.
        xs = []
        for p, _ in points:
            xs.append(1.0 / (1.0 - p / 100.0) if p < 100.0 else math.nan)
        finite = [x for x in xs if not math.isnan(x)] or [1.0]
        xs = [x if not math.isnan(x) else max(finite) * 10 for x in xs]
        top = max(top, max(xs))
        ax.plot(xs, [max(v, 1e-3) for _, v in points], label=_label(cell, varying), lw=1.5)
    ax.set_xscale("log")
    _log_y(ax)
    ticks = [1.0 / (1.0 - p / 100.0) for p in _SPECTRUM_TICKS if 1.0 / (1.0 - p / 100.0) <= top]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"p{100 - 100 / x:g}"))
    ax.set_xlim(1.0, top * 1.2)
    ax.set_xlabel("percentile (rightmost point: max)")
    ax.set_ylabel("latency from intended send (ms)")
    _legend(ax, fontsize=8, loc="upper left")
    return _save(fig, path)


def _coverage(results: Mapping[str, Any], path: Path) -> str | None:
    cells = [c for c in results["cells"] if c["coverage"]["answers"]]
    if not cells:
        return None
    fig, ax = _figure(f"{results['scenario']['name']}: coverage against deadline")
    by_strategy: dict[str, list[Mapping[str, Any]]] = {}
    for cell in cells:
        by_strategy.setdefault(cell["strategy"]["name"], []).append(cell)
    base_rate = results["scenario"]["load"]["rate_per_s"]
    deadlines: set[float] = set()
    for name, group in by_strategy.items():
        # One point per deadline: at the base rate if it ran there, else the first rate run.
        rates = {c["offered_rate_per_s"] for c in group}
        rate = base_rate if base_rate in rates else min(rates)
        group = sorted(
            (c for c in group if c["offered_rate_per_s"] == rate),
            key=lambda c: (c["strategy"]["deadline_ms"] or math.inf, c["shards"]),
        )
        if group[0]["strategy"]["deadline_ms"] is None:  # wait_all: no deadline to plot against
            cov = group[0]["coverage"]
            ax.axhline(cov["p1"], ls=":", lw=1, color="grey")
            ax.text(
                0.01,
                cov["p1"],
                f" {name} (no deadline) p1",
                fontsize=7,
                va="bottom",
                transform=ax.get_yaxis_transform(),
            )
            continue
        xs = [c["strategy"]["deadline_ms"] for c in group]
        deadlines.update(xs)
        (line,) = ax.plot(
            xs, [c["coverage"]["mean"] for c in group], marker="o", label=f"{name} mean"
        )
        ax.plot(
            xs,
            [c["coverage"]["p1"] for c in group],
            marker="v",
            ls="--",
            color=line.get_color(),
            label=f"{name} p1 (worst 1%)",
        )
    ax.set_xscale("log")
    if deadlines:
        ax.xaxis.set_major_locator(FixedLocator(sorted(deadlines)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        low, high = min(deadlines), max(deadlines)
        ax.set_xlim(low / 1.3, high * 1.3)
    ax.set_xlabel("deadline (ms)")
    ax.set_ylabel("coverage (share of documents searched)")
    ax.set_ylim(-0.02, 1.05)
    _legend(ax, fontsize=7, loc="lower right")
    return _save(fig, path)


def _timeline(results: Mapping[str, Any], path: Path) -> str | None:
    cells = pick_cells(results)
    if not any(c["timeline"] for c in cells):
        return None
    varying = _varying(cells)
    fig, ax = _figure(f"{results['scenario']['name']}: latency over time")
    warmup_s = results["scenario"]["load"]["warmup_s"]
    for cell in cells:
        rows = [r for r in cell["timeline"] if r["p99_ms"] is not None]
        xs = [r["t_s"] for r in rows]
        (line,) = ax.plot(
            xs, [max(r["p99_ms"], 1e-3) for r in rows], lw=1.5, label=f"{_label(cell, varying)} p99"
        )
        ax.plot(xs, [max(r["max_ms"], 1e-3) for r in rows], lw=0.8, ls=":", color=line.get_color())
    if warmup_s > 0:
        ax.axvspan(0, warmup_s, color="grey", alpha=0.15, label="warm-up (not reported)")
    _log_y(ax)
    ax.set_xlabel("intended send time (s from start); dotted: max per window")
    ax.set_ylabel("latency (ms)")
    _legend(ax, fontsize=7, loc="upper left")
    return _save(fig, path)


def _sweep(results: Mapping[str, Any], path: Path, axis: str) -> str | None:
    cells = results["cells"]
    key = "offered_rate_per_s" if axis == "rate_per_s" else "shards"
    values = sorted({c[key] for c in cells})
    if len(values) < 2:
        return None
    what = "offered load" if axis == "rate_per_s" else "fan-out width"
    fig, ax = _figure(f"{results['scenario']['name']}: p99 (solid) and p50 (dashed) by {what}")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for cell in cells:
        s = cell["strategy"]
        label = s["name"] + (f" {s['deadline_ms']:g} ms" if s["deadline_ms"] else "")
        if axis == "rate_per_s" and len({c["shards"] for c in cells}) > 1:
            label += f" {cell['shards']} shards"
        if axis == "shards" and len({c["offered_rate_per_s"] for c in cells}) > 1:
            label += f" {cell['offered_rate_per_s']:g}/s"
        groups.setdefault(label, []).append(cell)
    for label, group in list(groups.items())[:MAX_LINES]:
        group = sorted(group, key=lambda c: c[key])
        xs = [c[key] for c in group]
        p99 = [c["latency_ms"]["p99_ms"] or math.nan for c in group]
        p50 = [c["latency_ms"]["p50_ms"] or math.nan for c in group]
        (line,) = ax.plot(xs, p99, marker="o", label=label)
        ax.plot(xs, p50, marker=".", ls="--", color=line.get_color())
    _log_y(ax)
    if values[-1] / max(values[0], 1e-9) >= 10:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("offered rate (queries/s)" if axis == "rate_per_s" else "shards (fan-out)")
    ax.set_ylabel("latency (ms)")
    _legend(ax, fontsize=7, loc="upper left")
    return _save(fig, path)


def write_plots(results: Mapping[str, Any], out_dir: Path, prefix: str = "") -> list[str]:
    """Write every plot that applies to ``results`` into ``out_dir``; return the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _spectrum(results, out_dir / f"{prefix}spectrum.png"),
        _coverage(results, out_dir / f"{prefix}coverage.png"),
        _timeline(results, out_dir / f"{prefix}timeline.png"),
        _sweep(results, out_dir / f"{prefix}load.png", "rate_per_s"),
        _sweep(results, out_dir / f"{prefix}width.png", "shards"),
    ]
    return [name for name in written if name is not None]
