"""The manifest: format version, validation, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.index import FORMAT_VERSION, Manifest, build_index, open_index


def test_manifest_round_trips_through_json(tiny_corpus: Path, tmp_path: Path) -> None:
    """Manifest.read gives back what build_index wrote, including the format version."""
    manifest = build_index(tiny_corpus, tmp_path / "idx", 2)
    data = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert set(data["stats"]) >= {"doc_count", "avg_doc_len", "doc_freq", "token_count"}
    assert Manifest.from_dict(data) == manifest


def test_another_format_version_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    """An index of another format version does not open: it must be rebuilt."""
    build_index(tiny_corpus, tmp_path / "idx", 2)
    path = tmp_path / "idx" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"format version .* rebuild the index"):
        open_index(tmp_path / "idx")


def test_a_directory_without_manifest_is_not_an_index(tmp_path: Path) -> None:
    """open_index on a plain directory raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="not an index directory"):
        open_index(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("stats"), "missing or invalid field"),
        (lambda d: d["shards"].pop(), "shards hold"),
        (lambda d: d["shards"][0].update(shard_id=5), "shard ids must be 0..N-1"),
    ],
)
def test_damaged_manifests_are_refused(
    tiny_corpus: Path, tmp_path: Path, edit: object, message: str
) -> None:
    """Missing fields and inconsistent shard lists raise ValueError with a reason."""
    build_index(tiny_corpus, tmp_path / "idx", 2)
    path = tmp_path / "idx" / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        Manifest.read(tmp_path / "idx")


def test_not_json_is_refused(tmp_path: Path) -> None:
    """A manifest that is not JSON raises ValueError naming the file."""
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match=r"manifest\.json: not valid JSON"):
        Manifest.read(tmp_path)
