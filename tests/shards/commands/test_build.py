"""``python -m shards build``: summary line, bad lines, options, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator._cli import run_commands
from shards.__main__ import COMMANDS
from shards.index import AnalyzerConfig, Manifest


def _build(*argv: str) -> int:
    return run_commands("python -m shards", "test", COMMANDS, ["build", *argv])


def test_build_prints_a_summary_and_writes_an_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A good corpus builds; the summary names documents, shards and terms."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "cats"}\n{"_id": "b", "title": "Dogs"}\n')
    assert _build("--corpus", str(corpus), "--shards", "2", "--out", str(tmp_path / "i")) == 0
    assert "2 documents in 2 shards, 2 terms" in capsys.readouterr().out
    assert Manifest.read(tmp_path / "i").n_shards == 2


def test_a_bad_line_fails_with_its_number_unless_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 and one line naming line 2; --skip-bad-lines builds and counts it."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "cats"}\n{oops\n')
    out = str(tmp_path / "i")
    assert _build("--corpus", str(corpus), "--shards", "2", "--out", out) == 2
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err
    assert "Traceback" not in err
    assert _build("--corpus", str(corpus), "--shards", "2", "--out", out, "--skip-bad-lines") == 0
    assert "skipped 1 bad line(s)" in capsys.readouterr().out


def test_analyzer_options_are_recorded_in_the_manifest(tmp_path: Path) -> None:
    """--stemmer, --stop-words and --no-lowercase end up in the manifest's analyzer."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "The Cats"}\n')
    argv = ["--corpus", str(corpus), "--shards", "1", "--out", str(tmp_path / "i")]
    assert _build(*argv, "--stemmer", "porter", "--stop-words", "none", "--no-lowercase") == 0
    manifest = Manifest.read(tmp_path / "i")
    assert manifest.analyzer == AnalyzerConfig(lowercase=False, stop_words="none", stemmer="porter")
    assert set(manifest.stats.doc_freq) == {"The", "Cat"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--shards", "0"], "shard count"), (["--shards", "1", "--stemmer", "x"], "unknown stemmer")],
)
def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """Bad shard counts and stemmers exit 2 with a message, no traceback."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n')
    assert _build("--corpus", str(corpus), "--out", str(tmp_path / "i"), *extra) == 2
    assert message in capsys.readouterr().err


def test_a_missing_corpus_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corpus path that does not exist exits 2 naming it."""
    assert _build("--corpus", str(tmp_path / "no.jsonl"), "--shards", "1", "--out", "x") == 2
    assert "does not exist" in capsys.readouterr().err
