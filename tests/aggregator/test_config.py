"""Cluster configuration: defaults, the shipped example, and errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator import ConfigError
from aggregator.admission import DEFAULT_MAX_LOOP_LAG_MS, AdmissionLimits
from aggregator.breaker import BreakerConfig
from aggregator.config import (
    ClusterConfig,
    LimitsConfig,
    QueryConfig,
    ServerConfig,
    ShardConfig,
    load_config,
    parse_config,
)
from aggregator.retry import RetryConfig
from aggregator.tail import TailConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "cluster.example.toml"

MINIMAL = """
[[shards]]
name = "a"
url = "http://127.0.0.1:9001/"
"""


def test_minimal_config_takes_every_default() -> None:
    """Only [[shards]] is required; everything else has its default; URLs lose the slash."""
    config = parse_config(MINIMAL, "cluster.toml")
    assert config == ClusterConfig(
        (ShardConfig("a", "http://127.0.0.1:9001"),),
        QueryConfig(),
        LimitsConfig(),
        ServerConfig(),
        "cluster.toml",
    )
    assert config.server.host == "127.0.0.1"


def test_the_shipped_example_loads_and_states_the_defaults() -> None:
    """docs/cluster.example.toml is valid and its values are the defaults."""
    config = load_config(EXAMPLE)
    assert [s.name for s in config.shards] == ["shard-0", "shard-1"]
    assert config.limits == LimitsConfig()
    assert config.query == QueryConfig()
    assert config.server == ServerConfig()


def test_every_section_is_read() -> None:
    """Values in [server], [query] and [limits] override the defaults."""
    config = parse_config(
        MINIMAL
        + """
[server]
host = "0.0.0.0"
port = 9000
token = "s3cret"
client_id_header = ""
[query]
default_deadline_ms = 250
max_k = 50
[limits]
max_in_flight = 8
max_waiting = 0
min_budget_ms = 1.5
max_loop_lag_ms = 0
max_queue_wait_ms = 10
shutdown_grace_ms = 100
"""
    )
    assert config.server == ServerConfig("0.0.0.0", 9000, "s3cret", "")
    assert config.query == QueryConfig(250.0, 50)
    assert (config.limits.max_in_flight, config.limits.max_waiting) == (8, 0)
    assert config.limits.min_budget_ms == 1.5
    assert config.limits.shutdown_grace_ms == 100.0
    assert config.limits.admission() == AdmissionLimits(
        8, 0, 1.5, max_loop_lag_ms=None, max_queue_wait_ms=10.0
    )
    assert LimitsConfig().admission().max_loop_lag_ms == DEFAULT_MAX_LOOP_LAG_MS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "shards: at least one"),
        ("shards = []", "shards: at least one"),
        ("shards = 3", "shards: must be an array of tables"),
        ("[[shards]]\nurl = 'http://h:1'", "shards[0].name: is required"),
        ("[[shards]]\nname = 'a'", "shards[0].url: is required"),
        ("[[shards]]\nname = 'a'\nurl = 'ftp://h:1'", "shards[0].url: must be an http"),
        ("[[shards]]\nname = 'a'\nurl = 'http://:1'", "shards[0].url: has no host"),
        ("[[shards]]\nname = 'a'\nurl = 'http://u:p@h:1'", "shards[0].url: must not carry"),
        ("[[shards]]\nname = 'a'\nurl = 'http://h:99999'", "shards[0].url: not a valid URL"),
        ("[[shards]]\nname = 'a'\nurl = 'http://h:1?x=1'", "shards[0].url: must not have a query"),
        ("[[shards]]\nname = 'a'\nurl = 'http://h:1'\nport = 3", "shards[0].port: unknown key"),
        ("[[shards]]\nname = 7\nurl = 'http://h:1'", "shards[0].name: must be a string"),
        ("[[shards]]\nname = ' a'\nurl = 'http://h:1'", "shards[0].name: must be 1..128"),
        (
            "[[shards]]\nname = 'a'\nurl = 'http://h:1'\n[[shards]]\nname = 'a'\nurl = 'http://h:2'",
            "shards[1].name: duplicate name 'a' (also shards[0])",
        ),
        (
            "[[shards]]\nname = 'a'\nurl = 'http://h:1'\n[[shards]]\nname = 'b'\nurl = 'http://h:1/'",
            "shards[1].url: duplicate url",
        ),
        (MINIMAL + "[extra]\n", "extra: unknown key"),
        (MINIMAL + "[query]\ndefault_deadline = 5", "query.default_deadline: unknown key"),
        (MINIMAL + "[query]\ndefault_deadline_ms = 0", "query.default_deadline_ms: must be in"),
        (MINIMAL + "[query]\ndefault_deadline_ms = nan", "query.default_deadline_ms: must be in"),
        (MINIMAL + "[query]\ndefault_deadline_ms = '5'", "must be a number, got a string"),
        (MINIMAL + "[query]\nmax_k = 1001", "query.max_k: must be in 1..1000"),
        (MINIMAL + "[query]\nmax_k = 1.5", "query.max_k: must be an integer, got a float"),
        (MINIMAL + "[limits]\nmax_in_flight = 0", "limits.max_in_flight: must be in 1.."),
        (MINIMAL + "[limits]\nmax_waiting = true", "must be an integer, got a boolean"),
        (MINIMAL + "[limits]\nmax_body_bytes = 1", "limits.max_body_bytes: must be in 64.."),
        (MINIMAL + "[limits]\nmin_budget_ms = -1", "limits.min_budget_ms: must be in"),
        (MINIMAL + "[limits]\nmax_loop_lag_ms = -1", "limits.max_loop_lag_ms: must be in"),
        (MINIMAL + "[server]\nport = 70000", "server.port: must be in 0..65535"),
        (MINIMAL + "[server]\nhost = ''", "server.host: must not be empty"),
        (MINIMAL + "[server]\ntoken = 'a b'", "server.token: must be printable ASCII"),
        (MINIMAL + "[server]\nclient_id_header = 'X:Y'", "server.client_id_header: not a valid"),
        ("server = 3\n" + MINIMAL, "server: must be a table"),
        ("[[shards]\n", "invalid TOML"),
    ],
)
def test_errors_name_the_file_and_the_key(text: str, message: str) -> None:
    """Every invalid config raises ConfigError starting with the file name and naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cluster.toml")
    assert str(info.value).startswith("cluster.toml: ")
    assert message in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the path, not an OSError traceback."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(missing)


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    """Errors from a file carry its path."""
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "[limits]\nmax_waiting = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: limits\.max_waiting: must be in 0\.\."):
        load_config(path)


# -- replicas and [tail] -----------------------------------------------------------------------

REPLICATED = """
[[shards]]
name = "a"
url = "http://127.0.0.1:9001"
[[shards]]
name = "b"
replicas = ["http://127.0.0.1:9100/", "http://127.0.0.1:9101"]
"""


def test_a_shard_may_list_replicas_next_to_single_url_shards() -> None:
    """`replicas` gives a shard several URLs (url = the first); `url` still means one."""
    config = parse_config(REPLICATED, "cluster.toml")
    a, b = config.shards
    assert a == ShardConfig("a", "http://127.0.0.1:9001")
    assert a.replicas == ("http://127.0.0.1:9001",)
    assert b.url == "http://127.0.0.1:9100"
    assert b.replicas == ("http://127.0.0.1:9100", "http://127.0.0.1:9101")
    assert config.has_replicas
    assert config.tail is None
    assert config.tail_policy() == TailConfig()


def test_no_replicas_and_no_tail_table_means_no_tail_policy() -> None:
    """A plain cluster keeps one request per shard: no tail policy."""
    config = parse_config(MINIMAL)
    assert not config.has_replicas
    assert config.tail_policy() is None


def test_the_shipped_example_lists_replicas_and_default_tail_settings() -> None:
    """docs/cluster.example.toml's [tail] tables state exactly TailConfig's defaults."""
    config = load_config(EXAMPLE)
    assert len(config.shards[1].replicas) == 2
    assert config.tail == TailConfig()


def test_tail_table_maps_milliseconds_to_tail_config() -> None:
    """Every [tail] key lands in TailConfig, durations converted from ms to seconds."""
    config = parse_config(
        MINIMAL
        + """
[tail]
selection = "round_robin"
ewma_decay_ms = 2000
hedge_after_ms = 20
hedge_window_ms = 10000
hedge_refresh_ms = 1000
hedge_min_samples = 10
hedge_min_delay_ms = 2
backup_share = 0.1
backup_burst = 10
max_attempts = 3
reuse_replicas = true
[tail.breaker]
failure_threshold = 3
window_ms = 5000
cool_down_ms = 500
max_cool_down_ms = 8000
backoff_factor = 3
[tail.retry]
enabled = false
base_backoff_ms = 1
max_backoff_ms = 4
"""
    )
    assert config.tail == TailConfig(
        selection="round_robin",
        ewma_decay_s=2.0,
        hedge_after_s=0.02,
        hedge_percentile=None,
        hedge_window_s=10.0,
        hedge_refresh_s=1.0,
        hedge_min_samples=10,
        hedge_min_delay_s=0.002,
        backup_share=0.1,
        backup_burst=10.0,
        max_attempts=3,
        reuse_replicas=True,
        breaker=BreakerConfig(3, 5.0, 0.5, 8.0, 3.0),
        retry=RetryConfig(False, 0.001, 0.004),
    )
    assert config.tail_policy() is config.tail


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("hedge_percentile = 99", TailConfig(hedge_percentile=99.0)),
        ("hedging = false", TailConfig(hedge_percentile=None)),
        ("selection = 'random'", TailConfig(selection="random")),
    ],
)
def test_hedging_is_a_percentile_a_fixed_delay_or_off(tail: str, expected: TailConfig) -> None:
    """hedge_percentile and hedging = false map to the planner's hedge settings."""
    assert parse_config(MINIMAL + "[tail]\n" + tail).tail == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[shards]]\nname = 'a'\nurl = 'http://h:1'\nreplicas = ['http://h:2']",
            "shards[0].replicas: give either url or replicas, not both",
        ),
        ("[[shards]]\nname = 'a'\nreplicas = []", "shards[0].replicas: must list 1..16 URLs"),
        ("[[shards]]\nname = 'a'\nreplicas = 'http://h:1'", "shards[0].replicas: must be an array"),
        (
            "[[shards]]\nname = 'a'\nreplicas = ['http://h:1', 'ftp://h:2']",
            "shards[0].replicas[1]: must be an http",
        ),
        (
            "[[shards]]\nname = 'a'\nreplicas = ['http://h:1', 3]",
            "shards[0].replicas[1]: must be a string",
        ),
        (
            "[[shards]]\nname = 'a'\nreplicas = ['http://h:1', 'http://h:1/']",
            "shards[0].replicas[1]: duplicate url 'http://h:1' (also shards[0].replicas[0])",
        ),
        (
            "[[shards]]\nname = 'a'\nurl = 'http://h:1'\n"
            "[[shards]]\nname = 'b'\nreplicas = ['http://h:2', 'http://h:1']",
            "shards[1].replicas[1]: duplicate url 'http://h:1' (also shards[0].url)",
        ),
        (
            "[[shards]]\nname = 'a'\nreplicas = ["
            + ", ".join(f"'http://h:{i}'" for i in range(1, 18))
            + "]",
            "shards[0].replicas: must list 1..16 URLs, got 17",
        ),
        ("tail = 3\n" + MINIMAL, "tail: must be a table"),
        (MINIMAL + "[tail]\nselectoin = 'p2c'", "tail.selectoin: unknown key"),
        (MINIMAL + "[tail]\nselection = 'fastest'", "tail.selection: must be one of p2c"),
        (
            MINIMAL + "[tail]\nhedge_after_ms = 5\nhedge_percentile = 95",
            "tail.hedge_after_ms: give either hedge_after_ms or hedge_percentile",
        ),
        (
            MINIMAL + "[tail]\nhedging = false\nhedge_percentile = 95",
            "tail.hedge_percentile: is set but hedging = false",
        ),
        (MINIMAL + "[tail]\nhedging = 'no'", "tail.hedging: must be true or false, got a string"),
        (MINIMAL + "[tail]\nhedge_percentile = 100", "tail.hedge_percentile: must be in (0, 100)"),
        (MINIMAL + "[tail]\nhedge_after_ms = -1", "tail.hedge_after_ms: must be in [0,"),
        (MINIMAL + "[tail]\nhedge_refresh_ms = 60000", "tail.hedge_refresh_ms: must not exceed"),
        (MINIMAL + "[tail]\newma_decay_ms = 0", "tail.ewma_decay_ms: must be in (0,"),
        (MINIMAL + "[tail]\nbackup_share = 1.5", "tail.backup_share: must be in [0, 1]"),
        (MINIMAL + "[tail]\nmax_attempts = 6", "tail.max_attempts: must be in 1..5"),
        (MINIMAL + "[tail]\nreuse_replicas = 1", "tail.reuse_replicas: must be true or false"),
        (MINIMAL + "[tail]\nbreaker = 3", "tail.breaker: must be a table"),
        (MINIMAL + "[tail.breaker]\nthreshold = 3", "tail.breaker.threshold: unknown key"),
        (MINIMAL + "[tail.breaker]\nfailure_threshold = 0", "tail.breaker.failure_threshold"),
        (
            MINIMAL + "[tail.breaker]\ncool_down_ms = 60000",
            "tail.breaker.cool_down_ms: must not exceed max_cool_down_ms",
        ),
        (MINIMAL + "[tail.breaker]\nbackoff_factor = 0.5", "tail.breaker.backoff_factor: must be"),
        (MINIMAL + "[tail.retry]\nenabled = 1", "tail.retry.enabled: must be true or false"),
        (MINIMAL + "[tail.retry]\nbase_ms = 1", "tail.retry.base_ms: unknown key"),
        (
            MINIMAL + "[tail.retry]\nbase_backoff_ms = 100",
            "tail.retry.base_backoff_ms: must not exceed max_backoff_ms",
        ),
    ],
)
def test_replica_and_tail_errors_name_the_file_and_the_key(text: str, message: str) -> None:
    """Bad replicas and [tail] values raise ConfigError naming the file and the exact key."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cluster.toml")
    assert str(info.value).startswith("cluster.toml: ")
    assert message in str(info.value)
