"""``python -m aggregator query``: exit codes, JSON shape, tables and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from aggregator.__main__ import COMMANDS
from aggregator._cli import run_commands

RESPONSE_KEYS = {"hits", "partial", "took_ms", "deadline_ms", "completeness", "shards"}
COMPLETENESS_KEYS = {
    "shards_total",
    "shards_ok",
    "shards_timed_out",
    "shards_failed",
    "shards_skipped",
    "docs_total",
    "docs_searched",
    "coverage",
}


def _run(*argv: str) -> int:
    return run_commands("python -m aggregator", "test", COMMANDS, ["query", *argv])


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = _run(*argv, "--json", "--loop", "asyncio")
    out = capsys.readouterr().out
    return status, json.loads(out)


def test_json_has_exactly_the_response_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with the documented keys, 16 shards and k=10 by default."""
    status, body = _run_json(capsys, "hello", "--shard-latency", "constant:0s")
    assert status == 0
    assert set(body) == RESPONSE_KEYS
    assert set(body["completeness"]) == COMPLETENESS_KEYS
    assert len(body["shards"]) == 16
    assert len(body["hits"]) == 10
    assert body["partial"] is False
    assert body["deadline_ms"] == pytest.approx(50.0)
    assert {"shard", "status", "latency_ms", "hits", "reason"} <= set(body["shards"][0])


def test_same_seed_same_hits(capsys: pytest.CaptureFixture[str]) -> None:
    """The same seed and query give the same ranked hits; another seed gives others."""
    args = ("hello", "--shard-latency", "constant:0s", "-k", "5", "--sim-shards", "4")
    _, first = _run_json(capsys, *args, "--seed", "7")
    _, again = _run_json(capsys, *args, "--seed", "7")
    _, other = _run_json(capsys, *args, "--seed", "8")
    assert first["hits"] == again["hits"]
    assert len(first["hits"]) == 5
    assert first["hits"] != other["hits"]


def test_slow_shard_is_reported_as_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    """A --slow shard that hangs times out and the answer is marked partial."""
    status, body = _run_json(
        capsys,
        "hello",
        "--sim-shards",
        "4",
        "--shard-latency",
        "constant:0s",
        "--slow",
        "1:constant:0s;hang=1",
        "--deadline-ms",
        "20",
    )
    assert status == 0
    assert body["partial"] is True
    assert [s["status"] for s in body["shards"]] == ["ok", "timeout", "ok", "ok"]
    assert body["completeness"]["shards_timed_out"] == 1


def test_table_output_lists_hits_and_shards(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json the hits and a completeness table are printed."""
    status = _run(
        "hello", "--sim-shards", "3", "--shard-latency", "constant:0s", "--slow", "2:error=1"
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "completeness" in out
    assert "shard-02" in out
    assert "simulated failure" in out
    assert "partial" in out


def test_min_coverage_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    """--min-coverage runs a good-enough query."""
    status, body = _run_json(
        capsys,
        "hello",
        "--sim-shards",
        "4",
        "--shard-latency",
        "constant:0s",
        "--min-coverage",
        "0.5",
    )
    assert status == 0
    assert body["completeness"]["shards_total"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard-latency", "bogus:1ms"], "unknown model"),
        (["--shard-latency", "constant:5"], "needs a unit"),
        (["-k", "0"], "k must be"),
        (["--deadline-ms", "-5"], "deadline"),
        (["--deadline-ms", "nan"], "deadline"),
        (["--sim-shards", "0"], "sim-shards"),
        (["--slow", "99:constant:1s"], "out of range"),
        (["--slow", "x"], "INDEX:SPEC"),
        (["--slow", "1:constant:1s", "--slow", "1:constant:2s"], "twice"),
        (["--min-coverage", "2"], "min_coverage"),
        (["--loop", "trio"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Bad input prints one error line on stderr and exits with status 2, no traceback."""
    try:
        status = _run("hello", *argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "usage:" in err


def test_no_shard_answered_exits_1_with_error_json(capsys: pytest.CaptureFixture[str]) -> None:
    """When every shard fails: exit 1, one stderr line, and the error object with --json."""
    status = _run(
        "hello", "--sim-shards", "3", "--shard-latency", "error=1", "--json", "--loop", "asyncio"
    )
    captured = capsys.readouterr()
    assert status == 1
    body = json.loads(captured.out)
    assert body["error"]["type"] == "NoShardAnswered"
    assert len(body["error"]["shards"]) == 3
    assert len(captured.err.strip().splitlines()) == 1
    assert "no shard answered" in captured.err


def test_module_runs_with_defaults_on_uvloop() -> None:
    """``python -m aggregator query hello --json`` works with no other flags."""
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "query", "hello", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert set(body) == RESPONSE_KEYS
    assert body["completeness"]["shards_total"] == 16


def test_module_bad_spec_exits_2_without_traceback() -> None:
    """A bad spec from the real command line is one line on stderr and exit status 2."""
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "query", "hello", "--shard-latency", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
