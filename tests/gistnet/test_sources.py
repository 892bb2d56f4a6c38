"""Corpus-scale text sources: every format read as the same stream of documents, ranges of
that stream (what a part of a split reads), and errors that name the file and line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gistnet.bounds import SourceBounds
from gistnet.config import SplitConfig
from gistnet.errors import BoundError, ConfigError
from gistnet.sources import (
    count_documents,
    document_range,
    file_documents,
    files_in_range,
    planned_name,
    text_bytes,
)
from tests.service_stack import REPO

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


# --------------------------------------------------------------------------- bounds


def write_long_line_zst(path, *, line_bytes: int, chunk: int = 1 << 20) -> None:
    """A .jsonl.zst of one short document, then one of `line_bytes` bytes, compressed as a
    stream: the file stays a few KB, the line is never held here."""
    with path.open("wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as out:
        out.write(b'{"text": "short"}\n{"text": "')
        left = line_bytes
        while left > 0:
            out.write(b"a" * min(chunk, left))
            left -= chunk
        out.write(b'"}\n')


SMALL = SourceBounds(max_file_bytes=4096, max_document_bytes=1024)


def test_a_line_past_the_document_bound_is_refused_naming_the_setting(tmp_path):
    path = tmp_path / "long.jsonl.zst"
    write_long_line_zst(path, line_bytes=100_000)
    assert path.stat().st_size < 1000
    roomy = SourceBounds(max_file_bytes=1 << 30, max_document_bytes=1024)
    documents = file_documents(path, bounds=roomy)
    assert next(documents) == "short"  # the documents before it are read as usual
    with pytest.raises(
        BoundError,
        match=r"long\.jsonl\.zst:2: .*longer than 1024 bytes "
        r"\(sources\.max_document_bytes\).*GISTNET_LIMITS",
    ):
        next(documents)
    with pytest.raises(BoundError, match="sources.max_document_bytes"):
        count_documents(path, bounds=roomy)
    # A line of exactly the bound is a document.
    exact = tmp_path / "exact.jsonl"
    exact.write_text(json.dumps({"text": "b" * 1000})[:1024].ljust(1024) + "\n")
    assert count_documents(exact, bounds=roomy) == 1


def test_a_file_that_expands_past_the_file_bound_is_refused_as_it_streams(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    line = _jsonl_bytes(["x" * 100])
    path.write_bytes(gzip.compress(line * 1000, compresslevel=9))  # 126 KB of text
    assert path.stat().st_size < 4096
    with pytest.raises(
        BoundError,
        match=r"bomb\.jsonl\.gz: .*longer than 4096 bytes once "
        r"decompressed \(sources\.max_file_bytes\)",
    ):
        count_documents(path, bounds=SMALL)
    with pytest.raises(BoundError, match="sources.max_file_bytes"):
        list(file_documents(path, bounds=SMALL))
    assert text_bytes(path, bounds=SourceBounds()) == len(line) * 1000
    assert text_bytes(path, bounds=SourceBounds(), at_most=5000) <= 5000 + len(line)


def test_a_txt_file_or_a_parquet_value_past_the_bounds_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "big.txt").write_text("y" * 2000)
    with pytest.raises(BoundError, match=r"big\.txt: a document longer than 1024 bytes"):
        list(file_documents(tmp_path / "big.txt", bounds=SMALL))
    table = pa.table({"text": ["fine", "z" * 2000, "fine"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    with pytest.raises(BoundError, match=r"rows\.parquet: row 1: .*sources\.max_document_bytes"):
        list(file_documents(tmp_path / "rows.parquet", bounds=SMALL))
    pq.write_table(
        pa.table({"text": [f"{i}" + "w" * 999 for i in range(10)]}), tmp_path / "wide.parquet"
    )
    with pytest.raises(BoundError, match=r"wide\.parquet: .*sources\.max_file_bytes"):
        count_documents(tmp_path / "wide.parquet", bounds=SMALL)


def test_gistnet_limits_moves_the_bounds_of_a_reader_given_none(tmp_path, monkeypatch):
    path = tmp_path / "long.jsonl.zst"
    write_long_line_zst(path, line_bytes=5000)
    assert count_documents(path) == 2
    monkeypatch.setenv("GISTNET_LIMITS", '{"sources.max_document_bytes": 1000}')
    with pytest.raises(BoundError, match="longer than 1000 bytes"):
        count_documents(path)


_PEAK_MEMORY = """
import sys
from gistnet.errors import BoundError
from gistnet.sources import count_documents, file_documents
for read in (count_documents, lambda p: list(file_documents(p))):
    try:
        read(sys.argv[1])
    except BoundError as err:
        assert "sources.max_document_bytes" in str(err), err
    else:
        raise SystemExit("the 1 GiB line was read")
# VmHWM, not getrusage: a child's ru_maxrss starts at its parent's, this is its own peak.
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")))
"""


def test_a_one_gib_line_is_refused_with_the_default_bounds_without_ever_being_held(tmp_path):
    path = tmp_path / "gib.jsonl.zst"
    write_long_line_zst(path, line_bytes=1 << 30, chunk=16 << 20)
    assert path.stat().st_size < 200_000
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    peak = int(done.stdout.split()[-1])
    # Python and its imports, a line buffer of the default document bound or two and the
    # decompressor's: never the GiB (reading the line whole took this process past 2 GB).
    assert peak < 256 << 20, peak


PAGE = """<!DOCTYPE html>
<html><head><title>Loops</title><style>p { color: red }</style>
<script>var menu = "Home | Index";</script></head>
<body>
<header><a href="/">Site home</a></header>
<nav class="menu"><ul><li>Tutorial</li><li>Library</li></ul></nav>
<div class="related" role="navigation"><a href="prev.html">previous</a></div>
<div class="body" role="main">
  <h1>4. Loops<a class="headerlink" href="#loops">&para;</a></h1>
  <p>The <code>for</code> statement
     iterates over the items of a sequence &mdash; in order.<br>Each one once.</p>
  <pre>for w in words:
    print(w)</pre>
  <p>A stray end tag</span> changes nothing.</p>
  <noscript>Enable scripts</noscript>
</div>
<div class="sphinxsidebar" role="navigation"><h3>Table of contents</h3></div>
<aside>Related: while loops</aside>
<footer>&copy; Copyright 2001-2023</footer>
</body></html>
"""


def test_an_html_page_is_one_document_of_its_content_text(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "loops.html").write_text(PAGE, encoding="utf-8")
    (tmp_path / "pages" / "empty.htm").write_text("<html><body><nav>x</nav></body></html>")
    split = SplitConfig(source="pages/*.htm*")
    assert count_documents(tmp_path / "pages" / "loops.html") == 1
    empty, page = list(document_range("s", split, tmp_path))  # sorted: empty.htm first
    assert empty == ""
    assert page == (
        "4. Loops\n\n"
        "The for statement iterates over the items of a sequence \u2014 in order.\n"
        "Each one once.\n\n"
        "for w in words:\n    print(w)\n\n"
        "A stray end tag changes nothing."
    )


def test_an_html_page_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin.html").write_bytes("<p>caf\u00e9</p>".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.html: not UTF-8"):
        list(document_range("s", SplitConfig(source="latin.html"), tmp_path))


def test_a_holdout_divides_whole_files_between_two_splits_by_their_paths(tmp_path):
    pages = tmp_path / "site"
    for section in ("guide", "library"):
        (pages / section).mkdir(parents=True)
        for i in range(30):
            (pages / section / f"p{i:02d}.txt").write_text(f"{section} {i}")

    def side(take, seed=0, source="site/*/*.txt"):
        split = SplitConfig(source=source, holdout={"share": 0.2, "take": take, "seed": seed})
        return list(document_range("s", split, tmp_path))

    held, rest = side("held_out"), side("rest")
    assert sorted(held + rest) == sorted(f"{s} {i}" for s in ("guide", "library") for i in range(30))
    assert not set(held) & set(rest) and 4 <= len(held) <= 20
    assert side("held_out", seed=1) != held
    # the sides depend on the paths under the glob's folder, not on where that folder is
    moved = tmp_path / "elsewhere"
    pages.rename(moved)
    assert side("held_out", source=str(moved / "*" / "*.txt")) == held
    with pytest.raises(ValueError, match="inline documents have none"):
        SplitConfig(documents=["a"], holdout={"share": 0.2, "take": "rest"})
    # one file, and the split asks for the side it is not on
    other_side = "rest" if "guide 0" in held else "held_out"
    with pytest.raises(ConfigError, match=r"leaves none of the 1 files"):
        side(other_side, source="elsewhere/guide/p00.txt")

