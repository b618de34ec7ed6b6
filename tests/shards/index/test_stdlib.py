"""The built-in corpus: stdlib documentation gathered safely, indexed and cached."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from shards.index import FORMAT_VERSION, builtin_index_dir, open_index
from shards.index import stdlib as stdlib_corpus
from shards.index.stdlib import stdlib_documents, stdlib_module_names


def test_documents_are_modules_functions_classes_and_methods() -> None:
    """Dotted ids, signatures in titles, public re-exports under the package's name."""
    docs = {d.doc_id: d for d in stdlib_documents(["json", "textwrap"])}
    assert {"json", "json.dumps", "json.JSONDecoder", "json.JSONDecoder.decode"} <= docs.keys()
    assert docs["json.dumps"].title.startswith("json.dumps(obj, *, skipkeys=False")
    assert "Serialize" in docs["json.dumps"].text
    assert docs["json"].title.startswith("json — JSON (JavaScript Object Notation)")
    assert "textwrap.dedent" in docs
    assert not any(d.startswith("json.decoder.JSONDecoder") for d in docs)  # documented once


def test_modules_with_import_side_effects_are_never_visited() -> None:
    """antigravity, this, tkinter, idlelib, test suites and __main__ modules are skipped."""
    names = stdlib_module_names()
    assert "json" in names
    assert "json.decoder" in names
    for banned in ("antigravity", "this", "tkinter", "idlelib", "test", "turtle"):
        assert banned not in names
    assert not [n for n in names if n.startswith(("test.", "tkinter.", "idlelib."))]
    assert not [n for n in names if "__main__" in n or ".tests" in n]


def test_a_module_that_fails_to_import_is_skipped() -> None:
    """Unknown or failing modules yield nothing and break nothing."""
    docs = list(stdlib_documents(["no_such_module_here", "json.tool"]))
    assert docs
    assert docs[0].doc_id == "json.tool"


def _fake_gather(calls: list[Path]) -> Callable[[Path, Iterable[str]], None]:
    def gather(out: Path, modules: Iterable[str] = ()) -> None:
        calls.append(out)
        stdlib_corpus.write_corpus(out, ["json", "textwrap"])

    return gather


def test_builtin_index_is_built_once_and_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call builds into the cache; later calls reuse it; rebuild=True rebuilds."""
    calls: list[Path] = []
    monkeypatch.setattr(stdlib_corpus, "_gather_in_child", _fake_gather(calls))
    first = builtin_index_dir(2, cache_dir=tmp_path)
    assert len(calls) == 1
    assert builtin_index_dir(2, cache_dir=tmp_path) == first
    assert len(calls) == 1
    builtin_index_dir(2, cache_dir=tmp_path, rebuild=True)
    assert len(calls) == 2
    shards = open_index(first)
    assert len(shards) == 2
    hits = [h for s in shards for h in s.search_terms(s.analyze("serialize json"), 3)]
    assert "json.dumps" in {h.doc_id for h in hits}


def test_the_cache_key_holds_python_version_format_and_shard_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another Python, format version or shard count uses another directory."""
    monkeypatch.setattr(stdlib_corpus, "_gather_in_child", _fake_gather([]))

    path = builtin_index_dir(3, cache_dir=tmp_path)
    version = ".".join(map(str, sys.version_info[:3]))
    assert version in path.name
    assert f"format{FORMAT_VERSION}" in path.name
    assert path.name.endswith("-3shards")


def test_a_damaged_cached_index_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached index whose manifest does not read is built again."""
    calls: list[Path] = []
    monkeypatch.setattr(stdlib_corpus, "_gather_in_child", _fake_gather(calls))
    path = builtin_index_dir(2, cache_dir=tmp_path)
    (path / "manifest.json").write_text("{")
    assert builtin_index_dir(2, cache_dir=tmp_path) == path
    assert len(calls) == 2
    assert json.loads((path / "manifest.json").read_text())["format_version"] == FORMAT_VERSION


def test_gathering_runs_in_a_child_process(tmp_path: Path) -> None:
    """The child process writes the corpus of the modules it is given as JSON lines."""
    out = tmp_path / "corpus.jsonl"
    stdlib_corpus._gather_in_child(out, ["textwrap"])
    ids = [json.loads(line)["_id"] for line in out.read_text().splitlines()]
    assert "textwrap.dedent" in ids
    assert all(i == "textwrap" or i.startswith("textwrap.") for i in ids)
