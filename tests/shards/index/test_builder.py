"""Building: reading JSON lines, bad lines, stable partitioning, files and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shards.index import AnalyzerConfig, Manifest, build_index, open_index, shard_of
from shards.index.builder import Document, build_index_from_documents, read_corpus
from tests.shards.index.conftest import TINY_DOCS, write_jsonl


def test_build_writes_a_manifest_with_global_statistics(tiny_corpus: Path, tmp_path: Path) -> None:
    """Document counts per shard add up; N, total length and df are corpus-wide."""
    manifest = build_index(tiny_corpus, tmp_path / "idx", 3)
    assert manifest == Manifest.read(tmp_path / "idx")
    assert manifest.n_shards == 3
    assert sum(s.doc_count for s in manifest.shards) == manifest.stats.doc_count == 6
    assert manifest.stats.doc_freq["cat"] == 4  # d1, d2, d4, d5 (stemmed "cats")
    assert manifest.stats.avg_doc_len == pytest.approx(manifest.stats.token_count / 6)
    assert manifest.analyzer == AnalyzerConfig()
    for entry in manifest.shards:
        assert (tmp_path / "idx" / entry.dir_name / "doc_idx.npy").is_file()


def test_partition_is_a_stable_hash_of_the_id(tiny_corpus: Path, tmp_path: Path) -> None:
    """Each document lands on shard_of(id), the same value in every process and run."""
    build_index(tiny_corpus, tmp_path / "idx", 4)
    shards = open_index(tmp_path / "idx")
    for shard in shards:
        for doc_id in shard.postings.doc_ids:
            assert shard.name == f"shard-{shard_of(doc_id, 4):03d}"
    # BLAKE2b-based, so these values never change (unlike hash(), salted per process).
    assert [shard_of(f"doc{i}", 8) for i in range(6)] == [shard_of(f"doc{i}", 8) for i in range(6)]
    assert shard_of("json.dumps", 4) == shard_of("json.dumps", 4)


def test_same_corpus_in_any_order_gives_identical_files(tmp_path: Path) -> None:
    """Documents are renumbered by id and terms sorted: input order does not matter."""
    a = build_index(write_jsonl(tmp_path / "a.jsonl", TINY_DOCS), tmp_path / "ia", 2)
    b = build_index(write_jsonl(tmp_path / "b.jsonl", TINY_DOCS[::-1]), tmp_path / "ib", 2)
    assert a.to_dict() | {"source": ""} == b.to_dict() | {"source": ""}
    for name in ("doc_idx.npy", "tf.npy", "indptr.npy", "terms.json", "docs.json"):
        one = (tmp_path / "ia" / "shard-001" / name).read_bytes()
        assert one == (tmp_path / "ib" / "shard-001" / name).read_bytes()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"title": "no id"}', "missing or empty document id"),
        ('{"_id": "", "text": "x"}', "missing or empty document id"),
        ('{"_id": "x", "text": 5}', '"text" must be a string'),
        ('{"_id": "x", "title": ["a"]}', '"title" must be a string'),
        ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1'"),
    ],
)
def test_a_bad_line_is_an_error_naming_its_line_number(
    tmp_path: Path, line: str, reason: str
) -> None:
    """The build stops at the first bad line with the file, line number and reason."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "d1", "text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"c\.jsonl: line 3: .*{reason[:12]}"):
        build_index(corpus, tmp_path / "idx", 2)
    assert not (tmp_path / "idx").exists()


def test_invalid_utf8_is_a_bad_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their line number."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n')
    with pytest.raises(ValueError, match="line 2: not UTF-8"):
        build_index(corpus, tmp_path / "idx", 1)


def test_skip_bad_lines_skips_and_counts_them(tmp_path: Path) -> None:
    """With skip_bad_lines, bad lines are left out and counted in the manifest."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"_id": "a", "text": "x"}\nnope\n{"_id": "a", "text": "dup"}\n{"id": 7, "text": "y"}\n',
        encoding="utf-8",
    )
    manifest = build_index(corpus, tmp_path / "idx", 2, skip_bad_lines=True)
    assert manifest.skipped_lines == 2
    assert manifest.stats.doc_count == 2
    ids = {d for s in open_index(tmp_path / "idx") for d in s.postings.doc_ids}
    assert ids == {"a", "7"}  # an integer id is taken as its decimal text


def test_read_corpus_reports_skips() -> None:
    """on_skip hears each skipped line number and reason."""
    skipped: list[tuple[int, str]] = []
    docs = list(
        read_corpus(
            ['{"_id": "a"}', "{", '{"_id": "b", "text": "t"}'],
            skip_bad_lines=True,
            on_skip=lambda n, why: skipped.append((n, why)),
        )
    )
    assert [d.doc_id for d in docs] == ["a", "b"]
    assert [n for n, _ in skipped] == [2]


def test_an_existing_index_is_replaced_but_other_directories_are_not(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    """Rebuilding over an index replaces it; a non-index directory is refused untouched."""
    build_index(tiny_corpus, tmp_path / "idx", 2)
    assert build_index(tiny_corpus, tmp_path / "idx", 3).n_shards == 3
    assert Manifest.read(tmp_path / "idx").n_shards == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not an index directory"):
        build_index(tiny_corpus, other, 2)
    assert (other / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("n_shards", [0, -1, 1025])
def test_bad_shard_counts_are_rejected(tiny_corpus: Path, tmp_path: Path, n_shards: int) -> None:
    """The shard count must be in 1..1024."""
    with pytest.raises(ValueError, match="shard count"):
        build_index(tiny_corpus, tmp_path / "idx", n_shards)


def test_more_shards_than_documents_leaves_empty_shards_that_answer(tmp_path: Path) -> None:
    """An empty shard is valid: it opens, holds 0 documents and finds nothing."""
    build_index_from_documents([Document("only", "t", "word")], tmp_path / "idx", 4)
    shards = open_index(tmp_path / "idx")
    assert sorted(s.doc_count for s in shards) == [0, 0, 0, 1]
    assert all(s.search_terms(["word"], 5) == [] for s in shards if s.doc_count == 0)


def test_docs_json_keeps_ids_in_string_order(tiny_corpus: Path, tmp_path: Path) -> None:
    """Shard-local numbering follows the ids' string order (ties break by id)."""
    build_index(tiny_corpus, tmp_path / "idx", 1)
    docs = json.loads((tmp_path / "idx" / "shard-000" / "docs.json").read_text())
    assert docs["ids"] == sorted(docs["ids"])
    assert docs["titles"][docs["ids"].index("d5")] == ""
