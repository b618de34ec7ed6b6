"""Small corpora the index tests build themselves."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

#: A tiny corpus with shared words (ties), a title-only and a text-only document.
TINY_DOCS: tuple[Mapping[str, str], ...] = (
    {"_id": "d1", "title": "Cats", "text": "cats chase mice in the house"},
    {"_id": "d2", "title": "Dogs", "text": "dogs chase cats and cats run"},
    {"_id": "d3", "title": "Mice", "text": "mice eat cheese"},
    {"_id": "d4", "title": "Birds and cats", "text": ""},
    {"id": "d5", "text": "cheese is made from milk; cats like milk"},
    {"_id": "d6", "title": "Fish", "text": "fish swim in water"},
)


def write_jsonl(path: Path, docs: Iterable[Mapping[str, object]]) -> Path:
    """Write ``docs`` as JSON lines to ``path``; returns ``path``."""
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """The tiny corpus as a JSON-lines file."""
    return write_jsonl(tmp_path / "tiny.jsonl", TINY_DOCS)
