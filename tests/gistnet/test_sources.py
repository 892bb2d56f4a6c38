"""Corpus-scale text sources: every format read as the same stream of documents, ranges of
that stream (what a part of a split reads), and errors that name the file and line."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gistnet.config import SplitConfig
from gistnet.errors import ConfigError
from gistnet.sources import (
    count_documents,
    document_range,
    file_documents,
    files_in_range,
    planned_name,
)

DOCS = [f"document {i}: " + "word " * (i % 7) + "\u00e9t\u00e9 \u2014 end" for i in range(23)]


def _jsonl_bytes(docs: list[str], key: str = "text") -> bytes:
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def write_every_format(folder, docs=DOCS) -> dict[str, list[str]]:
    """The same documents as .jsonl, .jsonl.gz, .jsonl.zst (two frames), .parquet (row
    groups of 4) and a folder of .txt files; {glob: documents in split order}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_bytes(_jsonl_bytes(docs))
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(docs)))
    half = len(docs) // 2
    frames = [
        zstandard.ZstdCompressor().compress(_jsonl_bytes(part))
        for part in (docs[:half], docs[half:])
    ]
    (folder / "a.jsonl.zst").write_bytes(b"".join(frames))
    pq.write_table(
        pa.table({"id": range(len(docs)), "body": docs}), folder / "a.parquet", row_group_size=4
    )
    texts = folder / "txt"
    texts.mkdir()
    for i, doc in enumerate(docs[:5]):
        (texts / f"{i:02d}.txt").write_text(doc)
    return {
        "a.jsonl": docs,
        "a.jsonl.gz": docs,
        "a.jsonl.zst": docs,
        "a.parquet": docs,
        "txt/*.txt": docs[:5],
    }


@pytest.fixture
def corpus(tmp_path):
    return tmp_path, write_every_format(tmp_path / "corpus")


def _split(source: str, **extra) -> SplitConfig:
    column = "body" if source.endswith(".parquet") else "text"
    return SplitConfig(source=f"corpus/{source}", text_column=column, **extra)


def test_every_format_reads_the_same_documents_in_order_and_counts_them(corpus):
    base, expected = corpus
    for source, docs in expected.items():
        split = _split(source)
        assert list(document_range("s", split, base)) == docs, source
        paths = sorted((base / "corpus").glob(source))
        assert sum(count_documents(p, text_column=split.text_column) for p in paths) == len(docs)


def test_any_range_of_documents_is_that_slice_of_the_split(corpus):
    base, expected = corpus
    for source, docs in expected.items():
        split = _split(source)
        for start, stop in [(0, 3), (3, 4), (4, 9), (9, len(docs)), (len(docs), len(docs))]:
            assert (
                list(document_range("s", split, base, start=start, stop=stop)) == docs[start:stop]
            )


def test_a_range_with_the_plans_counts_skips_earlier_files_unread(tmp_path):
    base = tmp_path
    (base / "c").mkdir()
    for name, part in (("0.jsonl", DOCS[:8]), ("1.jsonl", DOCS[8:15]), ("2.jsonl", DOCS[15:])):
        (base / "c" / name).write_bytes(_jsonl_bytes(part))
    split = SplitConfig(source="c/*.jsonl")
    counts = [(f"c/{i}.jsonl", n) for i, n in enumerate((8, 7, 8))]
    # a file before the range is never opened: make it unreadable to prove it
    (base / "c" / "0.jsonl").write_bytes(b"not json at all\n" * 8)
    assert list(document_range("s", split, base, start=9, stop=20, counts=counts)) == DOCS[9:20]
    assert planned_name(base / "c" / "1.jsonl", base) == "c/1.jsonl"

    assert files_in_range(counts, 9, 20) == ["c/1.jsonl", "c/2.jsonl"]
    assert files_in_range(counts, 0, 8) == ["c/0.jsonl"]
    (base / "c" / "2.jsonl").unlink()  # a file of the range that is gone is named
    with pytest.raises(ConfigError, match=r"c/2\.jsonl was planned but is not there"):
        list(document_range("s", split, base, start=9, stop=20, counts=counts))
    grown = [("c/0.jsonl", 8), ("c/1.jsonl", 6), ("c/2.jsonl", 8)]  # the plan saw one fewer
    (base / "c" / "2.jsonl").write_bytes(_jsonl_bytes(DOCS[15:]))
    with pytest.raises(ConfigError, match=r"c/1\.jsonl holds 7 documents but held 6"):
        list(document_range("s", split, base, start=9, stop=20, counts=grown))


def test_blank_lines_are_not_documents_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "one"}\n\n   \n{"text": "two"}\n{"txt": "three"}\n')
    assert count_documents(path) == 3
    documents = file_documents(path)
    assert next(documents) == "one" and next(documents) == "two"
    with pytest.raises(ConfigError, match=r"x\.jsonl:5: .* 'text' string"):
        next(documents)
    assert list(file_documents(path, text_column="txt", skip=2)) == ["three"]


def test_parquet_without_its_text_column_names_the_columns_it_has(corpus):
    base, _ = corpus
    split = SplitConfig(source="corpus/a.parquet")  # text_column defaults to "text"
    with pytest.raises(ConfigError, match=r"no column 'text' \(it has id, body\)"):
        list(document_range("s", split, base))


def test_a_format_we_do_not_read_is_refused_naming_the_ones_we_do(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match=r"notes\.csv.*\.jsonl\.zst.*\.parquet"):
        list(document_range("s", SplitConfig(source="*.csv"), tmp_path))
