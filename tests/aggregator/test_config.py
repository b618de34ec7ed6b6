"""Cluster configuration: defaults, the shipped example, and errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator import ConfigError
from aggregator.config import (
    ClusterConfig,
    LimitsConfig,
    QueryConfig,
    ServerConfig,
    ShardConfig,
    load_config,
    parse_config,
)

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
shutdown_grace_ms = 100
"""
    )
    assert config.server == ServerConfig("0.0.0.0", 9000, "s3cret", "")
    assert config.query == QueryConfig(250.0, 50)
    assert (config.limits.max_in_flight, config.limits.max_waiting) == (8, 0)
    assert config.limits.min_budget_ms == 1.5
    assert config.limits.shutdown_grace_ms == 100.0


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
