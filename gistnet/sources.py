"""Text sources: the files a split names, read as one stream of documents in bounded memory.

A split's documents are those of the files its `source` matches, sorted by path, each
read in order:

    .txt                          the whole file is one document
    .html, .htm                   one document per page: its content text (gistnet/html_text.py)
    .jsonl, .jsonl.gz, .jsonl.zst one document per non-blank line, its `text_column` key
    .parquet                      one document per row, its `text_column` column

Compressed files are decompressed as a stream and Parquet is read a few thousand rows at
a time, so memory depends on the longest document, not on the file. Both are bounded
(`SourceBounds`): a line is read at most `max_document_bytes` at a time and a file's text
is counted as it is decompressed, so a small file that expands to a huge line or corpus
fails with a `BoundError` naming the bound before the memory is taken.

A document's place in that stream is what parallel preparation cuts by: part p of N takes
documents [p*D//N, (p+1)*D//N) (`document_range`), so a document never spans two parts
and the examples do not depend on N. `count_documents` counts a file without decoding its
JSON, and reading a range skips whole files before it (and whole Parquet row groups).

A split's `holdout` keeps whole files apart (pages of a site, books of a collection): each
file goes to one side by a hash of its path under the source's folder (`is_held_out`), so
a validation split can hold pages the training split never saw.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from gistnet.bounds import SourceBounds
from gistnet.config import HoldOut, SplitConfig
from gistnet.errors import BoundError, ConfigError
from gistnet.html_text import page_text

SOURCE_SUFFIXES = (".txt", ".html", ".htm", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
# Kinds whose every file is one document.
_WHOLE_FILE = (".txt", ".html", ".htm")
# Parquet rows decoded at a time: a batch of long documents stays a few MB.
PARQUET_BATCH_ROWS = 1024
_JSONL = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def source_kind(path: str | Path) -> str:
    """The suffix that says how to read `path`, or ConfigError naming the ones we read."""
    name = Path(path).name
    for suffix in sorted(SOURCE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise ConfigError(
        f"cannot read {name}: sources must be .txt or .html (one document per file), .jsonl, "
        f".jsonl.gz or .jsonl.zst (one JSON object per line) or .parquet (one document per row)"
    )


def glob_files(pattern: str) -> list[Path]:
    """The files a glob matches (`**` at any depth), sorted, each file once: a folder met
    again through a symbolic link (a loop) yields the same files, kept once by resolved
    path, under the shortest name that reaches them."""
    shortest: dict[Path, Path] = {}
    matches = sorted(glob.glob(pattern, recursive=True), key=lambda m: (m.count(os.sep), m))
    for match in matches:
        path = Path(match)
        if path.is_file():
            shortest.setdefault(path.resolve(), path)
    return sorted(shortest.values())


def _glob_root(pattern: str) -> Path:
    """The folder a glob's matches lie under: its leading parts that hold no wildcard (a
    plain file's folder)."""
    fixed: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root if len(fixed) < len(Path(pattern).parts) else root.parent


def is_held_out(relative_name: str, holdout: HoldOut) -> bool:
    """Whether the file named `relative_name` (its path under the source's folder) is on the
    held-out side: a hash of the name and seed read as a number in [0, 1) below `share`."""
    digest = hashlib.sha256(f"{holdout.seed}:{relative_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < holdout.share


def _holdout_side(files: list[Path], pattern: str, holdout: HoldOut) -> list[Path]:
    # Named from the glob's fixed folder, so the sides are the same wherever it lies.
    root = _glob_root(pattern)
    held = [is_held_out(path.relative_to(root).as_posix(), holdout) for path in files]
    return [p for p, h in zip(files, held, strict=True) if h == (holdout.take == "held_out")]


def source_files(split_name: str, split: SplitConfig, base_dir: Path) -> list[Path]:
    """The files of a split's `source` (a file or glob relative to `base_dir`), sorted;
    with a `holdout`, those of its side only."""
    pattern = split.source if os.path.isabs(split.source) else str(base_dir / split.source)
    files = glob_files(pattern)
    if not files:
        raise ConfigError(
            f"split {split_name!r}: source {split.source!r} matches no file "
            f"(looked for {pattern!r}; relative sources are read from the config file's folder)"
        )
    if split.holdout is not None:
        matched = len(files)
        files = _holdout_side(files, pattern, split.holdout)
        if not files:
            raise ConfigError(
                f"split {split_name!r}: holdout (share {split.holdout.share}, take "
                f"{split.holdout.take}) leaves none of the {matched} files {split.source!r} "
                f"matches: give more files or another share"
            )
    for path in files:
        try:
            source_kind(path)
        except ConfigError as err:
            raise ConfigError(f"split {split_name!r}: {err}") from None
    return files[: split.max_files] if split.max_files else files


# --------------------------------------------------------------------------- reading one file


def _open_binary(path: Path) -> BinaryIO:
    """A binary stream of the file's (decompressed) bytes."""
    kind = source_kind(path)
    if kind == ".jsonl.gz":
        return gzip.open(path, "rb")
    if kind == ".jsonl.zst":
        import zstandard

        raw = path.open("rb")
        # read_across_frames: files written by `zstd` in several frames (or concatenated).
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return path.open("rb")


def _bounds(bounds: SourceBounds | None) -> SourceBounds:
    # The CLIs pass none: the defaults with the operator's GISTNET_LIMITS, as the service.
    return bounds if bounds is not None else SourceBounds.from_environment()


def file_too_large(path: Path, bounds: SourceBounds) -> BoundError:
    return BoundError(
        f"{path.name}: its text is longer than {bounds.max_file_bytes} bytes once decompressed "
        f"(sources.max_file_bytes); cut the corpus into several files, or the operator can "
        f"raise the bound: GISTNET_LIMITS='{{\"sources.max_file_bytes\": ...}}'"
    )


def document_too_long(where: str, bounds: SourceBounds) -> BoundError:
    return BoundError(
        f"{where}: a document longer than {bounds.max_document_bytes} bytes "
        f"(sources.max_document_bytes); cut it into shorter documents, or the operator can "
        f"raise the bound: GISTNET_LIMITS='{{\"sources.max_document_bytes\": ...}}'"
    )


def _lines(path: Path, bounds: SourceBounds) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every line of a JSON-lines file, blank ones too. A line is
    read at most one byte past the document bound, so a longer one is never held, and the
    bytes read are counted against the file bound as they are decompressed."""
    longest, read = bounds.max_document_bytes, 0
    with _open_binary(path) as fh:
        lineno = 0
        while line := fh.readline(longest + 1):
            lineno += 1
            read += len(line)
            if read > bounds.max_file_bytes:
                raise file_too_large(path, bounds)
            # A line cut at the limit ends without its newline: longer than the bound.
            if len(line) > longest and not line.endswith(b"\n"):
                raise document_too_long(f"{path.name}:{lineno}", bounds)
            yield lineno, line


def _jsonl_lines(path: Path, bounds: SourceBounds) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line: the documents of a JSON-lines file."""
    for lineno, line in _lines(path, bounds):
        if line.strip():
            yield lineno, line


def _txt_bytes(path: Path, bounds: SourceBounds) -> bytes:
    """A .txt or .html file, one document: refused by its size before it is read."""
    longest = min(bounds.max_document_bytes, bounds.max_file_bytes)
    with path.open("rb") as fh:
        data = fh.read(longest + 1)  # not its size alone: the file may grow meanwhile
    if len(data) > longest:
        if longest == bounds.max_file_bytes:
            raise file_too_large(path, bounds)
        raise document_too_long(path.name, bounds)
    return data


def _parquet_file(path: Path, text_column: str, bounds: SourceBounds):
    """The open Parquet file, its text column checked, and refused from its footer when
    that column decompresses past the file bound."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ConfigError(f"{path}: not a readable Parquet file: {err}") from None
    schema = parquet.schema_arrow
    if text_column not in schema.names:
        raise ConfigError(
            f"{path}: no column {text_column!r} (it has {', '.join(schema.names)}); set the "
            f"split's text_column to the one holding the text"
        )
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ConfigError(f"{path}: column {text_column!r} holds {kind}, not text")
    if parquet_text_bytes(parquet, text_column) > bounds.max_file_bytes:
        raise file_too_large(path, bounds)
    return parquet


def parquet_text_bytes(parquet, text_column: str) -> int:
    """Bytes the text column takes decompressed, as the footer records them."""
    column = parquet.schema_arrow.get_field_index(text_column)
    metadata = parquet.metadata
    return sum(
        metadata.row_group(g).column(column).total_uncompressed_size
        for g in range(metadata.num_row_groups)
    )


def count_documents(
    path: str | Path, *, text_column: str = "text", bounds: SourceBounds | None = None
) -> int:
    """Documents in one source file, without decoding JSON (Parquet: from its footer); the
    bounds are checked on the way (BoundError)."""
    path, bounds = Path(path), _bounds(bounds)
    kind = source_kind(path)
    if kind in _WHOLE_FILE:
        _txt_bytes(path, bounds)
        return 1
    if kind == ".parquet":
        return _parquet_file(path, text_column, bounds).metadata.num_rows
    return sum(1 for _ in _jsonl_lines(path, bounds))


def text_bytes(
    path: str | Path,
    *,
    text_column: str = "text",
    bounds: SourceBounds | None = None,
    at_most: int | None = None,
) -> int:
    """Bytes of text one source file holds once decompressed, each bound checked as it
    streams (BoundError); reading stops once past `at_most`, the caller's own budget.
    Parquet's figure is its footer's: its values are checked as they are read."""
    path, bounds = Path(path), _bounds(bounds)
    kind = source_kind(path)
    if kind in _WHOLE_FILE:  # a page's markup: more than its text, never less
        return len(_txt_bytes(path, bounds))
    if kind == ".parquet":
        return parquet_text_bytes(_parquet_file(path, text_column, bounds), text_column)
    total = 0
    for _, line in _lines(path, bounds):
        total += len(line)
        if at_most is not None and total > at_most:
            break
    return total


def _parquet_documents(
    path: Path, text_column: str, skip: int, limit: int | None, bounds: SourceBounds
) -> Iterator[str]:
    import pyarrow.compute as pc

    parquet = _parquet_file(path, text_column, bounds)
    # Row groups wholly before the range are never read.
    groups, before = [], 0
    for g in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(g).num_rows
        if groups or before + rows > skip:
            groups.append(g)
        else:
            before += rows
    skip -= before
    if not groups:
        return
    left, row = limit, before
    for batch in parquet.iter_batches(
        batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=[text_column]
    ):
        # Checked on the Arrow column, before any value becomes a Python string.
        lengths = pc.binary_length(batch.column(0))
        if len(batch) and (pc.max(lengths).as_py() or 0) > bounds.max_document_bytes:
            longest = pc.index(lengths, pc.max(lengths)).as_py()
            raise document_too_long(f"{path.name}: row {row + longest}", bounds)
        row += len(batch)
        texts = batch.column(0).to_pylist()
        if skip:
            dropped = min(skip, len(texts))
            texts, skip = texts[dropped:], skip - dropped
        for text in texts:
            if left is not None:
                if left == 0:
                    return
                left -= 1
            yield text or ""  # a null row is an empty document: it still counts as one


def _jsonl_documents(
    path: Path, text_column: str, skip: int, limit: int | None, bounds: SourceBounds
) -> Iterator[str]:
    left = limit
    for index, (lineno, line) in enumerate(_jsonl_lines(path, bounds)):
        if index < skip:
            continue  # skipped lines are never decoded
        if left is not None:
            if left == 0:
                return
            left -= 1
        try:
            text = json.loads(line)[text_column]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise ConfigError(
                f"{path}:{lineno}: each line of a JSON-lines source must be an object with "
                f"a {text_column!r} string"
            )
        yield text


def _whole_file_text(path: Path, kind: str, bounds: SourceBounds) -> str:
    try:
        text = _txt_bytes(path, bounds).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return text if kind == ".txt" else page_text(text)


def file_documents(
    path: str | Path,
    *,
    text_column: str = "text",
    skip: int = 0,
    limit: int | None = None,
    bounds: SourceBounds | None = None,
) -> Iterator[str]:
    """The documents of one file, from the `skip`-th, at most `limit` of them, held to the
    bounds as they are read (BoundError)."""
    path, bounds = Path(path), _bounds(bounds)
    kind = source_kind(path)
    if kind in _WHOLE_FILE:
        if skip == 0 and limit != 0:
            yield _whole_file_text(path, kind, bounds)
        return
    if kind == ".parquet":
        yield from _parquet_documents(path, text_column, skip, limit, bounds)
        return
    yield from _jsonl_documents(path, text_column, skip, limit, bounds)


# --------------------------------------------------------------------------- a split's stream


def planned_name(path: Path, base_dir: Path) -> str:
    """How a plan names a source file: relative to the config's folder where it is inside it,
    so workers that mount the data root elsewhere still recognise it."""
    try:
        return str(path.resolve().relative_to(base_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def files_in_range(counts: Sequence[tuple[str, int]], start: int, stop: int | None) -> list[str]:
    """The planned files that hold any of documents [start, stop): all a part must read."""
    names, first = [], 0
    for name, count in counts:
        if (stop is None or first < stop) and first + count > start:
            names.append(name)
        first += count
    return names


def document_range(
    split_name: str,
    split: SplitConfig,
    base_dir: Path,
    *,
    start: int = 0,
    stop: int | None = None,
    counts: Sequence[tuple[str, int]] | None = None,
    bounds: SourceBounds | None = None,
) -> Iterator[str]:
    """Documents [start, stop) of a split, in order, each file held to `bounds` (the
    defaults with GISTNET_LIMITS when none are given).

    With `counts` ((file name, documents) from the split's plan) the planned files are
    read, not the glob's matches now: files outside the range are never opened, nor need
    they be there (a worker fetches only those of its range), and a file of the range that
    holds another number of documents than planned is an error.
    """
    if split.documents is not None:
        yield from split.documents[start:stop]
        return
    bounds = _bounds(bounds)
    if counts is None and (start > 0 or stop is not None):
        counts = [
            (
                planned_name(f, base_dir),
                count_documents(f, text_column=split.text_column, bounds=bounds),
            )
            for f in source_files(split_name, split, base_dir)
        ]
    if counts is None:  # the whole split, in one pass: no need to count first
        for path in source_files(split_name, split, base_dir):
            yield from file_documents(path, text_column=split.text_column, bounds=bounds)
        return
    first = 0  # index of the file's first document in the split
    for name, count in counts:
        if stop is not None and first >= stop:
            return
        if first + count <= start:
            first += count
            continue
        path = base_dir / name  # an absolute name stays as it is
        if not path.is_file():
            raise ConfigError(
                f"split {split_name!r}: {name} was planned but is not there any more; "
                f"prepare the dataset again"
            )
        skip = max(0, start - first)
        # Read to the file's end when the range goes on past it, so a changed count shows.
        limit = None if stop is None or stop >= first + count else stop - first - skip
        read = 0
        texts = file_documents(
            path, text_column=split.text_column, skip=skip, limit=limit, bounds=bounds
        )
        for text in texts:
            if limit is None and skip + read == count:
                read += 1  # one more than planned: the file grew
                break
            read += 1
            yield text
        if read != (count - skip if limit is None else limit):
            raise ConfigError(
                f"split {split_name!r}: {name} holds {skip + read} documents but held {count} "
                f"when the dataset was planned; prepare the dataset again"
            )
        first += count
