"""Tests of ``python -m bench run``: both modes end to end, outputs, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from aggregator._cli import run_commands
from bench.__main__ import COMMANDS

SCENARIO = """
name = "tiny"
description = "two strategies over four shards"
mode = "virtual"

[load]
rate_per_s = 50
duration_s = 2
warmup_s = 0.5
drain_s = 1

[cluster]
shards = 4
replicas = 2
latency = "lognormal:median=5ms,sigma=0.5"

[cluster.slow]
"1/0" = "constant:40ms"

[[strategy]]
kind = "wait_all"

[[strategy]]
kind = "deadline"
deadline_ms = 20

[[strategy]]
kind = "hedged"
deadline_ms = 20
hedge_after_ms = 10

[[strategy]]
kind = "good_enough"
deadline_ms = 20
min_coverage = 0.5
"""


def _bench(*argv: str) -> int:
    return run_commands("python -m bench", "benchmarks", COMMANDS, list(argv))


def _write(tmp_path: Path, text: str = SCENARIO) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_virtual_run_writes_every_output(tmp_path: Path) -> None:
    """A virtual run writes results.json with every figure, report.md and the plots."""
    out = tmp_path / "out"
    assert _bench("run", str(_write(tmp_path)), "--out", str(out), "--quiet") == 0
    results = orjson.loads((out / "results.json").read_bytes())
    assert results["mode"] == "virtual"
    cells = {c["strategy"]["name"]: c for c in results["cells"]}
    assert set(cells) == {"wait_all", "deadline", "hedged", "good_enough"}
    for cell in cells.values():
        for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"):
            assert cell["latency_ms"][key] is not None
        assert cell["requests"]["measured"] > 0
        assert cell["offered_rate_per_s"] == 50
        assert cell["kept_rate"] is True
        assert {"p50", "p1", "min"} <= set(cell["coverage"])
        assert cell["timeline"]
        assert cell["spectrum"][-1][0] == 100.0
    # Waiting for all pays the 40 ms replica on every query; the deadline cuts it at 20 ms.
    assert cells["wait_all"]["latency_ms"]["p50_ms"] >= 40.0
    assert cells["deadline"]["latency_ms"]["max_ms"] <= 20.1
    assert cells["deadline"]["partial_share"] == 1.0
    # Hedging asks the other replica after 10 ms and so answers completely, for extra requests.
    assert cells["hedged"]["extra_requests"] > 0
    assert cells["hedged"]["partial_share"] < cells["deadline"]["partial_share"]
    report = (out / "report.md").read_text()
    assert "| deadline@20ms rate=50/s shards=4 |" in report
    for png in ("spectrum.png", "coverage.png", "timeline.png"):
        assert (out / png).stat().st_size > 1000
        assert f"]({png})" in report


def test_virtual_runs_are_reproducible(tmp_path: Path) -> None:
    """The same scenario and seeds give the same figures on virtual time."""
    path = _write(tmp_path)
    figures = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert _bench("run", str(path), "--out", str(out), "--quiet", "--no-plots") == 0
        results = orjson.loads((out / "results.json").read_bytes())
        figures.append([(c["latency_ms"], c["coverage"]) for c in results["cells"]])
    assert figures[0] == figures[1]


def test_socket_run_drives_a_system_in_another_process(tmp_path: Path) -> None:
    """Socket mode starts the shards and aggregator in a child process and drives them over
    loopback HTTP; every request gets an answer and the server's counters come back."""
    text = SCENARIO.replace('mode = "virtual"', 'mode = "sockets"')
    text = text.replace("rate_per_s = 50", "rate_per_s = 20").replace(
        "duration_s = 2", "duration_s = 1.5"
    )
    # One strategy: each run starts its own system process, which takes a moment.
    text = (
        text[: text.index("[[strategy]]")] + '[[strategy]]\nkind = "deadline"\ndeadline_ms = 500\n'
    )

    out = tmp_path / "out"
    assert _bench("run", str(_write(tmp_path, text)), "--out", str(out), "--quiet") == 0
    results = orjson.loads((out / "results.json").read_bytes())
    assert results["mode"] == "sockets"
    for cell in results["cells"]:
        r = cell["requests"]
        assert r["measured"] > 0
        assert r["ok"] + r["partial"] + r["error"] == r["measured"]
        assert cell["server"]["shard_requests_served"] > 0


def test_target_drives_a_running_service(tmp_path: Path) -> None:
    """``--target URL`` drives an already running service's ``/search`` (no system started)."""
    server = Path(__file__).with_name("_sleep_server.py")
    text = SCENARIO.replace('mode = "virtual"', 'mode = "sockets"')
    text = text.replace("rate_per_s = 50", "rate_per_s = 20").replace(
        "duration_s = 2", "duration_s = 1.5"
    )
    text = text[: text.index("[[strategy]]")] + '[[strategy]]\nkind = "wait_all"\n'
    out = tmp_path / "out"
    with subprocess.Popen(
        [sys.executable, str(server), "5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        base = proc.stdout.readline().decode().strip()
        try:
            code = _bench("run", str(_write(tmp_path, text)), "--target", base, "--out", str(out))
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
    assert code == 0
    results = orjson.loads((out / "results.json").read_bytes())
    assert results["target"] == base.rstrip("/") + "/search"
    (cell,) = results["cells"]
    assert cell["requests"]["ok"] == cell["requests"]["measured"] > 0
    assert cell["latency_ms"]["min_ms"] >= 5.0
    assert cell["server"] == {}


def test_bad_scenario_is_one_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid scenario is reported on one line naming the file and key, exit status 2."""
    path = _write(tmp_path, SCENARIO.replace("rate_per_s = 50", "rate_per_s = -5"))
    assert _bench("run", str(path), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "tiny.toml: [load] rate_per_s" in err


def test_target_and_virtual_mode_do_not_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--target`` drives a live service over sockets, so ``--mode virtual`` is refused."""
    path = _write(tmp_path)
    code = _bench(
        "run", str(path), "--target", "http://127.0.0.1:9/", "--mode", "virtual", "--quiet"
    )
    assert code == 2
    assert "--target" in capsys.readouterr().err
