"""Tests of bench.scenario: the TOML schema, its validation messages and sweep expansion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.deadline import MAX_BUDGET_MS
from aggregator.errors import ConfigError
from bench.scenario import load_scenario, parse_scenario

SCENARIOS = sorted((Path(__file__).parents[2] / "bench" / "scenarios").glob("*.toml"))


def _minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"strategy": [{"kind": "deadline", "deadline_ms": 50}]}
    data.update(extra)
    return data


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_parses(path: Path) -> None:
    """Each file in bench/scenarios is valid and expands to at least one run."""
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.cells()


def test_the_shipped_set_covers_the_required_situations() -> None:
    """Healthy, slow shard, heavy tail, flaky, hung, degradation and overload all ship."""
    names = {p.stem for p in SCENARIOS}
    assert {
        "healthy",
        "one-slow-shard",
        "heavy-tail",
        "flaky-shard",
        "hung-shard",
        "degradation",
        "overload",
    } <= names


def test_defaults_fill_a_minimal_scenario() -> None:
    """Only a strategy is required; everything else has a stated default."""
    scenario = parse_scenario(_minimal(), "x.toml")
    assert scenario.name == "x"
    assert scenario.mode == "sockets"
    assert scenario.load.rate_per_s == 100.0
    assert scenario.cluster.shards == 8
    assert scenario.cluster.workers is None


def test_wait_all_carries_the_longest_budget() -> None:
    """wait_all has no deadline of its own: its queries carry the 60 s maximum budget."""
    scenario = parse_scenario({"strategy": [{"kind": "wait_all"}]})
    assert scenario.strategies[0].budget_ms == MAX_BUDGET_MS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_minimal(load={"rate_per_s": -1}), r"x\.toml: \[load\] rate_per_s: must be in"),
        (_minimal(load={"rate_per_s": "fast"}), r"\[load\] rate_per_s: must be a number"),
        (_minimal(load={"duration_s": 2, "warmup_s": 3}), r"\[load\] warmup_s: must be shorter"),
        (_minimal(load={"arrivals": "bursty"}), r"\[load\] arrivals: must be one of"),
        (_minimal(load={"rate": 5}), r"\[load\] unknown key\(s\): rate"),
        (_minimal(cluster={"shards": 0}), r"\[cluster\] shards: must be in"),
        (
            _minimal(cluster={"latency": "lognormal:median=5,sigma=1"}),
            r"\[cluster\] latency: .*unit",
        ),
        (_minimal(cluster={"slow": {"9": "constant:1ms"}}), r"\[cluster\] slow\.9: shard index"),
        (_minimal(cluster={"slow": {"x": "constant:1ms"}}), r"slow\.x: the key must be"),
        (_minimal(cluster={"slow": {"1/1": "constant:1ms"}}), r"slow\.1/1: replica index"),
        (_minimal(cluster={"slow": {"1": "hang=2"}}), r"slow\.1: .*probability"),
        (_minimal(mode="fast"), r"x\.toml: mode: must be one of"),
        (_minimal(colour="red"), r"x\.toml: unknown key\(s\): colour"),
        ({"strategy": []}, r"strategy: at least one"),
        ({"strategy": [{"kind": "deadline"}]}, r"\[strategy\.0\] deadline_ms: is required"),
        ({"strategy": [{"kind": "fastest"}]}, r"\[strategy\.0\] kind: must be one of"),
        (
            {"strategy": [{"kind": "wait_all", "deadline_ms": 5}]},
            r"\[strategy\.0\] deadline_ms: wait_all has no deadline",
        ),
        (
            {"strategy": [{"kind": "good_enough", "deadline_ms": 5}]},
            r"\[strategy\.0\] min_coverage: is required",
        ),
        (
            {"strategy": [{"kind": "deadline", "deadline_ms": 5, "hedge_after_ms": 1}]},
            r"hedge_after_ms: applies only to kind = 'hedged'",
        ),
        (
            {"strategy": [{"kind": "wait_all"}, {"kind": "wait_all"}]},
            r"names must be unique, repeated: wait_all",
        ),
        (
            _minimal(sweep={"rate_per_s": [10, 10]}),
            r"\[sweep\] rate_per_s: values must be distinct",
        ),
        (_minimal(sweep={"shards": [2.5]}), r"\[sweep\] shards: values must be integers"),
        (
            _minimal(sweep={"rate_per_s": list(range(1, 300))}),
            r"sweep: expands to 299 runs",
        ),
        (
            _minimal(cluster={"slow": {"5": "constant:1ms"}}, sweep={"shards": [2, 8]}),
            r"shards = 2 leaves out slow shard 5",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(data: dict[str, Any], message: str) -> None:
    """Every validation error is a ConfigError naming the file, table and key."""
    with pytest.raises(ConfigError, match=message):
        parse_scenario(data, "x.toml")


def test_unreadable_and_malformed_files_are_reported(tmp_path: Path) -> None:
    """A missing file or bad TOML is a ConfigError naming the file (and the TOML position)."""
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[load\nrate_per_s = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 1"):
        load_scenario(bad)


def test_cells_put_strategies_side_by_side_within_each_sweep_point() -> None:
    """Sweeps expand outermost (rate x width), strategies innermost; a deadline sweep varies
    only strategies that have a deadline."""
    scenario = parse_scenario(
        {
            "strategy": [
                {"kind": "wait_all"},
                {"kind": "deadline", "deadline_ms": 50},
            ],
            "sweep": {"rate_per_s": [10, 20], "deadline_ms": [5, 50], "shards": [4]},
        }
    )
    keys = [cell.key for cell in scenario.cells()]
    assert keys == [
        "wait_all rate=10/s shards=4",
        "deadline@5ms rate=10/s shards=4",
        "deadline@50ms rate=10/s shards=4",
        "wait_all rate=20/s shards=4",
        "deadline@5ms rate=20/s shards=4",
        "deadline@50ms rate=20/s shards=4",
    ]


def test_replica_specific_behaviour_wins_over_shard_wide() -> None:
    """``SHARD/REPLICA`` overrides ``SHARD``, which overrides the cluster's latency."""
    scenario = parse_scenario(
        _minimal(
            cluster={
                "replicas": 2,
                "latency": "constant:1ms",
                "slow": {"1": "constant:2ms", "1/0": "constant:3ms"},
            }
        )
    )
    c = scenario.cluster
    assert c.behaviour_of(0, 0) == "constant:1ms"
    assert c.behaviour_of(1, 0) == "constant:3ms"
    assert c.behaviour_of(1, 1) == "constant:2ms"
