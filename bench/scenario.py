"""Scenario files: what system to start, what load to offer, which strategies to compare.

A scenario is a TOML file (see ``bench/scenarios/*.toml``)::

    name = "one-slow-shard"            # default: the file's stem
    description = "one of eight shards answers in 80 ms"
    mode = "sockets"                   # or "virtual"; ``--mode`` overrides

    [load]                             # open-loop arrivals (bench.loadgen.LoadSpec)
    rate_per_s = 100                   # offered queries per second
    duration_s = 10                    # send window per run
    warmup_s = 1                       # requests intended earlier are not reported
    arrivals = "poisson"               # or "constant"
    max_inflight = 1000                # overflow policy: drop the send and count it
    max_requests = 100000
    drain_s = 5                        # wait at most this long for stragglers
    seed = 1

    [cluster]                          # simulated shards (shards.sim)
    shards = 8
    replicas = 1                       # copies of each shard (hedging needs 2)
    docs_per_shard = 1000
    latency = "lognormal:median=5ms,sigma=0.5"
    seed = 7
    max_concurrency = 64               # per shard server (socket mode)
    workers = 2                        # optional: finite capacity per shard copy
    max_queue = 64                     # calls waiting for a worker; overflow is rejected
    [cluster.slow]                     # shards that behave differently (shards.sim specs):
    0 = "constant:80ms"                #   every replica of shard 0
    "3/0" = "lognormal:median=50ms,sigma=0.5;error=0.1"   # only replica 0 of shard 3

    [query]
    texts = ["tail latency", "hedged requests"]
    k = 10

    [[strategy]]                       # one run per strategy, same load, side by side
    name = "deadline"                  # default: the kind
    kind = "deadline"                  # wait_all | deadline | hedged | good_enough
    deadline_ms = 50
    # hedged: hedge_after_ms = 10      good_enough: min_coverage = 0.9

    [sweep]                            # optional; every combination x every strategy
    rate_per_s = [50, 100, 200]
    deadline_ms = [20, 50, 100]        # applies to strategies that have a deadline
    shards = [4, 8, 16]

Every problem is reported as :class:`aggregator.errors.ConfigError` naming the file and the
key (``healthy.toml: [load] rate_per_s: must be a number > 0, got -1``); unknown keys are
errors too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aggregator.deadline import MAX_BUDGET_MS
from aggregator.errors import AggregatorError, ConfigError

__all__ = [
    "MODES",
    "STRATEGY_KINDS",
    "Cell",
    "ClusterConfig",
    "LoadConfig",
    "Scenario",
    "StrategyConfig",
    "SweepConfig",
    "load_scenario",
    "parse_scenario",
]

#: How a scenario can run: over real loopback sockets, or in process on virtual time.
MODES = ("sockets", "virtual")
#: The strategies a run can compare.
STRATEGY_KINDS = ("wait_all", "deadline", "hedged", "good_enough")
#: Most runs (cells) one scenario may expand to, sweeps included.
MAX_CELLS = 256
#: Most shards a scenario may ask for.
MAX_SHARDS = 10_000

_DEFAULT_TEXTS = ("tail latency", "hedged requests", "search aggregator", "partial results")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """The ``[load]`` table; see :class:`bench.loadgen.LoadSpec` for the meaning of each key."""

    rate_per_s: float = 100.0
    duration_s: float = 10.0
    warmup_s: float = 1.0
    arrivals: str = "poisson"
    max_inflight: int = 1000
    max_requests: int = 100_000
    drain_s: float = 5.0
    seed: int = 1


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The ``[cluster]`` table: how many simulated shards, and how each behaves."""

    shards: int = 8
    replicas: int = 1
    docs_per_shard: int = 1000
    latency: str = "lognormal:median=5ms,sigma=0.5"
    seed: int = 7
    max_concurrency: int = 64
    workers: int | None = None
    max_queue: int = 64
    #: ``(shard index, replica index or None for every replica, behaviour spec)``
    slow: tuple[tuple[int, int | None, str], ...] = ()

    def behaviour_of(self, shard: int, replica: int) -> str:
        """The behaviour spec of one copy of one shard (a replica-specific entry wins)."""
        spec = self.latency
        for index, copy, override in self.slow:
            if index == shard and copy is None:
                spec = override
        for index, copy, override in self.slow:
            if index == shard and copy == replica:
                spec = override
        return spec


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    """One ``[[strategy]]``: how queries are answered.

    ``wait_all`` waits for every shard (the budget is the longest a query may have,
    60 s); ``deadline`` answers with what arrived by ``deadline_ms``; ``hedged`` adds a
    backup request to another replica after ``hedge_after_ms`` (``None``: the planner's own
    adaptive delay); ``good_enough`` stops once ``min_coverage`` of the documents answered
    plus a grace period.
    """

    name: str
    kind: str
    deadline_ms: float | None = None
    min_coverage: float | None = None
    hedge_after_ms: float | None = None

    @property
    def has_deadline(self) -> bool:
        """True when the strategy's budget is a parameter (everything but ``wait_all``)."""
        return self.kind != "wait_all"

    @property
    def budget_ms(self) -> float:
        """The end-to-end budget each query carries, in milliseconds."""
        if self.kind == "wait_all" or self.deadline_ms is None:
            return MAX_BUDGET_MS
        return self.deadline_ms


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """The ``[sweep]`` table: values to try for each axis (empty: the scenario's own)."""

    rate_per_s: tuple[float, ...] = ()
    deadline_ms: tuple[float, ...] = ()
    shards: tuple[int, ...] = ()

    @property
    def axes(self) -> tuple[str, ...]:
        """The names of the axes that are swept."""
        return tuple(a for a in ("rate_per_s", "deadline_ms", "shards") if getattr(self, a))


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of a scenario: a strategy at one offered rate over one fan-out width."""

    strategy: StrategyConfig
    rate_per_s: float
    shards: int

    @property
    def key(self) -> str:
        """A unique, readable label: ``deadline@50ms rate=100/s shards=8``."""
        s = self.strategy
        budget = f"@{s.deadline_ms:g}ms" if s.has_deadline and s.deadline_ms else ""
        return f"{s.name}{budget} rate={self.rate_per_s:g}/s shards={self.shards}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed, validated scenario file."""

    name: str
    description: str
    path: str
    mode: str
    load: LoadConfig
    cluster: ClusterConfig
    strategies: tuple[StrategyConfig, ...]
    sweep: SweepConfig = field(default_factory=SweepConfig)
    texts: tuple[str, ...] = _DEFAULT_TEXTS
    k: int = 10

    def cells(self) -> list[Cell]:
        """Every run this scenario asks for, in order: sweep values outermost, strategies
        innermost (so strategies sit side by side at each point of the sweep).

        A deadline sweep varies only strategies that have a deadline; ``wait_all`` runs once
        per rate and width.
        """
        rates = self.sweep.rate_per_s or (self.load.rate_per_s,)
        widths = self.sweep.shards or (self.cluster.shards,)
        cells: list[Cell] = []
        for rate, width in itertools.product(rates, widths):
            for strategy in self.strategies:
                if strategy.has_deadline and self.sweep.deadline_ms:
                    for deadline_ms in self.sweep.deadline_ms:
                        swept = replace(strategy, deadline_ms=deadline_ms)
                        cells.append(Cell(swept, rate, width))
                else:
                    cells.append(Cell(strategy, rate, width))
        return cells


# -- parsing ----------------------------------------------------------------------------------


class _Table:
    """Typed reads from one TOML table, with errors naming the file, table and key."""

    def __init__(self, source: str, table: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.table = table
        self.data = data
        self.used: set[str] = set()

    def fail(self, key: str | None, message: str) -> ConfigError:
        where = f"[{self.table}] " if self.table else ""
        key_part = f"{key}: " if key else ""
        return ConfigError(f"{self.source}: {where}{key_part}{message}")

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def number(
        self,
        key: str,
        default: float | None,
        *,
        low: float = 0.0,
        high: float = math.inf,
        allow_low: bool = False,
    ) -> float | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(key, f"must be a number, got {value!r}")
        ok_low = value >= low if allow_low else value > low
        if not ok_low or value > high or math.isinf(value):
            bracket = "[" if allow_low else "("
            raise self.fail(key, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, low: int = 0, high: int = 2**31) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"must be in {low}..{high}, got {value!r}")
        return value

    def text(self, key: str, default: str, *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def table_of(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def array(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"must be an array, got {type(value).__name__}")
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(None, f"unknown key(s): {', '.join(unknown)}")


def _validate_shard_spec(spec: str) -> None:
    """Raise :class:`AggregatorError` if ``spec`` is not a shard behaviour the simulator reads."""
    try:
        from shards.sim import parse_behaviour  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        from shards.latency import parse_latency

        parse_latency(spec)
    else:
        parse_behaviour(spec)


def _parse_load(t: _Table) -> LoadConfig:
    d = LoadConfig()
    duration_s = t.number("duration_s", d.duration_s, high=3600.0)
    assert duration_s is not None
    warmup_s = t.number("warmup_s", d.warmup_s, allow_low=True, high=3600.0)
    assert warmup_s is not None
    if warmup_s >= duration_s:
        raise t.fail("warmup_s", f"must be shorter than duration_s ({duration_s:g} s)")
    load = LoadConfig(
        rate_per_s=t.number("rate_per_s", d.rate_per_s, high=1e6) or d.rate_per_s,
        duration_s=duration_s,
        warmup_s=warmup_s,
        arrivals=t.text("arrivals", d.arrivals, choices=("poisson", "constant")),
        max_inflight=t.integer("max_inflight", d.max_inflight, low=1, high=1_000_000),
        max_requests=t.integer("max_requests", d.max_requests, low=1, high=2_000_000),
        drain_s=t.number("drain_s", d.drain_s, allow_low=True, high=600.0) or 0.0,
        seed=t.integer("seed", d.seed),
    )
    t.check_unknown()
    return load


def _parse_cluster(t: _Table) -> ClusterConfig:
    d = ClusterConfig()
    shards = t.integer("shards", d.shards, low=1, high=MAX_SHARDS)
    latency = t.text("latency", d.latency)
    try:
        _validate_shard_spec(latency)
    except AggregatorError as exc:
        raise t.fail("latency", str(exc)) from None
    replicas = t.integer("replicas", d.replicas, low=1, high=8)
    slow: list[tuple[int, int | None, str]] = []
    for raw_key, spec in t.table_of("slow").items():
        key = f"slow.{raw_key}"
        shard_text, sep, replica_text = raw_key.partition("/")
        try:
            index = int(shard_text)
            replica = int(replica_text) if sep else None
        except ValueError:
            raise t.fail(key, "the key must be SHARD or SHARD/REPLICA, e.g. 3 or 3/0") from None
        if not 0 <= index < shards:
            raise t.fail(key, f"shard index must be in 0..{shards - 1}")
        if replica is not None and not 0 <= replica < replicas:
            raise t.fail(key, f"replica index must be in 0..{replicas - 1}")
        if not isinstance(spec, str):
            raise t.fail(key, f"must be a behaviour spec string, got {spec!r}")
        try:
            _validate_shard_spec(spec)
        except AggregatorError as exc:
            raise t.fail(key, str(exc)) from None
        slow.append((index, replica, spec))
    cluster = ClusterConfig(
        shards=shards,
        replicas=replicas,
        docs_per_shard=t.integer("docs_per_shard", d.docs_per_shard, low=1, high=10**9),
        latency=latency,
        seed=t.integer("seed", d.seed),
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, low=1, high=100_000),
        workers=t.integer("workers", 0, low=1, high=100_000) or None,
        max_queue=t.integer("max_queue", d.max_queue, low=0, high=1_000_000),
        slow=tuple(sorted(slow, key=lambda item: (item[0], -1 if item[1] is None else item[1]))),
    )
    t.check_unknown()
    return cluster


def _parse_strategy(t: _Table) -> StrategyConfig:
    kind = t.text("kind", "", choices=STRATEGY_KINDS)
    if not kind:
        raise t.fail("kind", f"is required: one of {', '.join(STRATEGY_KINDS)}")
    name = t.text("name", kind)
    deadline_ms = t.number("deadline_ms", None, high=MAX_BUDGET_MS)
    min_coverage = t.number("min_coverage", None, high=1.0)
    hedge_after_ms = t.number("hedge_after_ms", None, allow_low=True, high=MAX_BUDGET_MS)
    t.check_unknown()
    if kind == "wait_all" and deadline_ms is not None:
        raise t.fail("deadline_ms", "wait_all has no deadline; use kind = 'deadline'")
    if kind != "wait_all" and deadline_ms is None:
        raise t.fail("deadline_ms", f"is required for kind = {kind!r}")
    if kind == "good_enough" and min_coverage is None:
        raise t.fail("min_coverage", "is required for kind = 'good_enough'")
    if kind != "good_enough" and min_coverage is not None:
        raise t.fail("min_coverage", "applies only to kind = 'good_enough'")
    if kind != "hedged" and hedge_after_ms is not None:
        raise t.fail("hedge_after_ms", "applies only to kind = 'hedged'")
    return StrategyConfig(name, kind, deadline_ms, min_coverage, hedge_after_ms)


def _parse_axis(
    t: _Table, key: str, convert: Callable[[Any], float], *, low: float, high: float
) -> tuple[Any, ...]:
    values = []
    for item in t.array(key):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise t.fail(key, f"values must be numbers, got {item!r}")
        if not low < item <= high:
            raise t.fail(key, f"values must be in ({low:g}, {high:g}], got {item!r}")
        values.append(convert(item))
    if len(set(values)) != len(values):
        raise t.fail(key, "values must be distinct")
    return tuple(values)


def _parse_sweep(t: _Table) -> SweepConfig:
    def to_int(value: Any) -> float:
        if not isinstance(value, int):
            raise t.fail("shards", f"values must be integers, got {value!r}")
        return value

    sweep = SweepConfig(
        rate_per_s=_parse_axis(t, "rate_per_s", float, low=0, high=1e6),
        deadline_ms=_parse_axis(t, "deadline_ms", float, low=0, high=MAX_BUDGET_MS),
        shards=_parse_axis(t, "shards", to_int, low=0, high=MAX_SHARDS),
    )
    t.check_unknown()
    return sweep


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a scenario's TOML data; ``source`` names it in error messages.

    Raises :class:`ConfigError` naming the file and key of the first problem found.
    """
    top = _Table(source, "", data)
    stem = Path(source).stem if source != "<scenario>" else "scenario"
    name = top.text("name", stem)
    description = top.text("description", "")
    mode = top.text("mode", "sockets", choices=MODES)
    load = _parse_load(_Table(source, "load", top.table_of("load")))
    cluster = _parse_cluster(_Table(source, "cluster", top.table_of("cluster")))
    query = _Table(source, "query", top.table_of("query"))
    texts = query.array("texts") or list(_DEFAULT_TEXTS)
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise query.fail("texts", f"must be non-empty strings, got {text!r}")
    k = query.integer("k", 10, low=1, high=1000)
    query.check_unknown()
    raw_strategies = top.array("strategy")
    if not raw_strategies:
        raise top.fail("strategy", "at least one [[strategy]] table is required")
    strategies = []
    for i, raw in enumerate(raw_strategies):
        if not isinstance(raw, dict):
            raise top.fail("strategy", f"entry {i} must be a table")
        strategies.append(_parse_strategy(_Table(source, f"strategy.{i}", raw)))
    names = [s.name for s in strategies]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise top.fail("strategy", f"names must be unique, repeated: {', '.join(duplicates)}")
    sweep = _parse_sweep(_Table(source, "sweep", top.table_of("sweep")))
    top.check_unknown()
    scenario = Scenario(
        name=name,
        description=description,
        path=source,
        mode=mode,
        load=load,
        cluster=cluster,
        strategies=tuple(strategies),
        sweep=sweep,
        texts=tuple(texts),
        k=k,
    )
    cells = scenario.cells()
    if len(cells) > MAX_CELLS:
        raise top.fail("sweep", f"expands to {len(cells)} runs; at most {MAX_CELLS} allowed")
    for width in sweep.shards:
        for index, _, _ in cluster.slow:
            if index >= width:
                raise top.fail(
                    "sweep",
                    f"shards = {width} leaves out slow shard {index} of [cluster.slow]",
                )
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the scenario file at ``path``.

    Raises :class:`ConfigError` naming the file for a missing or unreadable file, bad TOML
    (with its line and column), or an invalid key.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read scenario: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: scenario is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return parse_scenario(data, source)
