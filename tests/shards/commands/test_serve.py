"""``python -m shards serve``: lists its shards, serves them, exits 0 on SIGTERM; bad input is 2."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import pytest

from aggregator._cli import run_commands
from shards.__main__ import COMMANDS


async def test_serve_lists_shards_and_stops_cleanly_on_sigterm() -> None:
    """The command prints NAME URL DOCS per shard, serves them, and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards",
        "serve",
        "--sim",
        "2",
        "--docs-per-shard",
        "50",
        "--base-port",
        "0",
        "--loop",
        "asyncio",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            lines = [(await process.stdout.readline()).decode().split() for _ in range(2)]
        assert [(name, docs) for name, _, docs in lines] == [("shard-00", "50"), ("shard-01", "50")]
        async with aiohttp.ClientSession() as session:
            for name, url, _ in lines:
                assert url.startswith("http://127.0.0.1:")
                async with session.get(url + "/healthz") as resp:
                    assert (await resp.json())["shard"] == name
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sim", "2", "--latency", "bogus"], "invalid latency spec"),
        (["--sim", "0"], "1..4096"),
        (["--sim", "2", "--shard", "1"], "--shard"),
        (["--sim", "2", "--slow", "5:constant:1s"], "out of range"),
        (["--index", "/nonexistent/index"], "nonexistent"),
        (["--sim", "2", "--base-port", "70000"], "--base-port"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad options print one error line and exit 2 before anything binds."""
    status = run_commands("python -m shards", "", COMMANDS, ["serve", *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
