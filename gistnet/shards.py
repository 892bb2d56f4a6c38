"""The Arrow shard format: schema, record-batch building and zero-copy reading.

Every column we write is a fixed-size list, so a reader that memory-maps the file sees
each column as one contiguous buffer and can view teacher_hidden as an (N, T, D) array
without copying. The seed's `tools/prepare_dataset.py` wrote variable-length lists: their
values are just as contiguous, so they are read the same way once the offsets show that
every row has the same length.

A split is read as a `ShardSet`, whatever its number of files: a one-file split is a set
of one. What a dataset is (its metadata, fingerprint and splits) is `gistnet.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from gistnet.errors import ShardError


def shard_schema(block_size: int, horizon: int, hidden_size: int) -> pa.Schema:
    t, h, d = block_size, horizon, hidden_size
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32(), t)),
            ("attention_mask", pa.list_(pa.int8(), t)),
            ("context_input_ids", pa.list_(pa.int32(), h)),
            ("context_attention_mask", pa.list_(pa.int8(), h)),
            ("teacher_hidden", pa.list_(pa.list_(pa.float32(), d), t)),
            ("gist_target", pa.list_(pa.float32(), d)),
        ]
    )


STRIDE_KEY = b"gistnet.stride"


def with_stride(schema: pa.Schema, stride: int, block_size: int) -> pa.Schema:
    """The schema carrying the windows' stride when it is not one block (the default, which
    shards written before the setting existed imply), so a shard alone tells where its
    documents start (`ShardSet.document_ids`)."""
    if stride == block_size:
        return schema
    return schema.with_metadata({STRIDE_KEY: str(stride).encode()})


def stride_of(schema: pa.Schema, block_size: int) -> int:
    value = (schema.metadata or {}).get(STRIDE_KEY)
    return int(value) if value else block_size


def _follows(previous: np.ndarray, following: np.ndarray, stride: int) -> np.ndarray:
    """(M,) whether window `following[i]` continues the document of `previous[i]`: it
    starts `stride` tokens later, so the two overlap in H - stride tokens. (M, H) each;
    needs stride < H."""
    h = previous.shape[1]
    return np.all(previous[:, stride:] == following[:, : h - stride], axis=1)


def _fixed(values: np.ndarray, *sizes: int) -> pa.Array:
    """Wrap a C-contiguous array as nested fixed-size lists without copying its buffer."""
    arr = pa.array(values.reshape(-1))
    for size in reversed(sizes):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def make_record_batch(
    *, input_ids: np.ndarray, context_input_ids: np.ndarray, teacher_hidden: np.ndarray
) -> pa.RecordBatch:
    """(N, T) ids, (N, H) context ids, (N, T, D) float32 states -> one record batch."""
    n, t = input_ids.shape
    h = context_input_ids.shape[1]
    d = teacher_hidden.shape[2]
    teacher_hidden = np.ascontiguousarray(teacher_hidden, dtype=np.float32)
    gist_target = teacher_hidden.mean(axis=1, dtype=np.float64).astype(np.float32)
    columns = [
        _fixed(np.ascontiguousarray(input_ids, dtype=np.int32), t),
        _fixed(np.ones((n, t), dtype=np.int8), t),
        _fixed(np.ascontiguousarray(context_input_ids, dtype=np.int32), h),
        _fixed(np.ones((n, h), dtype=np.int8), h),
        _fixed(teacher_hidden, t, d),
        _fixed(gist_target, d),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=shard_schema(t, h, d))


def _list_depth(typ: pa.DataType) -> int:
    depth = 0
    while pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        depth += 1
        typ = typ.value_type
    return depth


def _common_length(lengths: np.ndarray) -> int:
    """The length most rows have: the one a stray row is measured against."""
    if len(lengths) == 0:
        return 0
    if np.all(lengths == lengths[0]):
        return int(lengths[0])
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[np.argmax(counts)])


def _chunk_array(
    chunk: pa.Array,
    *,
    name: str,
    expected: tuple[int | None, ...],
    first_row: int,
    where: str,
) -> np.ndarray:
    """One chunk of a (nested) list column -> (rows, *sizes) numpy view of its values.

    Fixed-size lists carry their size in the type. For variable-length lists the offsets
    give each row's length; once they are all equal (to `expected` where given, else to
    one another) the flattened values are the same regular array, viewed without a copy.
    """
    rows = len(chunk)
    if chunk.null_count:
        row = first_row + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{where}: row {row} of column {name!r} is null")
    shape: list[int] = []
    values = chunk
    for level, want in enumerate(expected):
        if pa.types.is_fixed_size_list(values.type):
            size = values.type.list_size
            if want is not None and size != want:
                raise ShardError(
                    f"{where}: column {name!r} holds lists of {size} where {want} are expected"
                )
        else:
            lengths = np.diff(values.offsets.to_numpy())
            size = want if want is not None else _common_length(lengths)
            wrong = np.flatnonzero(lengths != size)
            if wrong.size:
                at = int(wrong[0])
                outer = int(np.prod(shape)) if shape else 1
                row, item = first_row + at // outer, at % outer
                inside = f" in its item {item}" if level else ""
                raise ShardError(
                    f"{where}: row {row} of column {name!r} has {int(lengths[at])} values"
                    f"{inside} where {size} are expected: every row must have the same length"
                )
            if values.null_count:  # a null inner list has length 0 and was caught above
                raise ShardError(f"{where}: column {name!r} has a null entry")
        shape.append(size)
        values = values.flatten()  # honours the slice: the values of these rows only
    try:
        flat = values.to_numpy(zero_copy_only=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ShardError(
            f"{where}: column {name!r} holds {values.type} values with nulls or of a type "
            f"that is not a plain number"
        ) from None
    return flat.reshape(rows, *shape)


class ChunkedRows:
    """An (N, ...) array left as the views of the file's record batches (or of every
    shard of a split: `ShardSet`), gathered on indexing: a shard written batch by batch,
    or a split written as many shards, is never copied whole into memory.

    Supports what training and evaluation do with teacher_hidden: `shape`, `len`, and
    indexing rows by an integer, a slice or an index array (-> a new ndarray).
    """

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # (chunks + 1,)
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, int | np.integer):
            rows = np.asarray([key], dtype=np.int64)
        elif isinstance(key, slice):
            rows = np.arange(*key.indices(len(self)))
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise TypeError("index the rows with an int, a slice or a 1-d index array")
            rows = rows.astype(np.int64, copy=False)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self.parts[c][rows[sel] - self.starts[c]]
        return out[0] if isinstance(key, int | np.integer) else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.concatenate(self.parts).astype(dtype or self.dtype, copy=False)


def _column_array(
    table: pa.Table,
    name: str,
    dtype: type[np.generic],
    *,
    expected: tuple[int | None, ...],
    where: str,
    chunked: bool = False,
) -> np.ndarray | ChunkedRows:
    """Column -> numpy array of shape (N, *sizes), a view into the mapped file where the
    dtype matches (the seed's int64 token ids are converted: one small copy).

    Several record batches are concatenated (one copy), or with `chunked` kept as a
    ChunkedRows of views: that is for teacher_hidden, the column as large as the file.
    """
    column = table.column(name)
    depth = _list_depth(column.type)
    if depth != len(expected):
        nesting = "a list of lists" if len(expected) == 2 else "a list"
        raise ShardError(
            f"{where}: column {name!r} has type {column.type}; each row must be {nesting} "
            f"of numbers"
        )
    parts, first_row = [], 0
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        part = _chunk_array(chunk, name=name, expected=expected, first_row=first_row, where=where)
        if not np.issubdtype(part.dtype, np.number):
            raise ShardError(f"{where}: column {name!r} holds {part.dtype} values, not numbers")
        # Every later chunk must agree with the first on the inner sizes.
        expected = part.shape[1:]
        parts.append(part.astype(dtype, copy=False))
        first_row += len(chunk)
    if not parts:
        return np.zeros((0, *(e or 0 for e in expected)), dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return ChunkedRows(parts) if chunked else np.concatenate(parts)



# --------------------------------------------------------------------------- token-only shards


def token_schema(block_size: int, horizon: int) -> pa.Schema:
    """A dataset prepared with `teacher_states: none`: the token columns alone. Training
    takes the block's states from a teacher forward inside the step."""
    t, h = block_size, horizon
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32(), t)),
            ("attention_mask", pa.list_(pa.int8(), t)),
            ("context_input_ids", pa.list_(pa.int32(), h)),
            ("context_attention_mask", pa.list_(pa.int8(), h)),
        ]
    )


def make_token_batch(*, input_ids: np.ndarray, context_input_ids: np.ndarray) -> pa.RecordBatch:
    """(N, T) ids and (N, H) context ids -> one record batch of the token-only schema."""
    n, t = input_ids.shape
    h = context_input_ids.shape[1]
    columns = [
        _fixed(np.ascontiguousarray(input_ids, dtype=np.int32), t),
        _fixed(np.ones((n, t), dtype=np.int8), t),
        _fixed(np.ascontiguousarray(context_input_ids, dtype=np.int32), h),
        _fixed(np.ones((n, h), dtype=np.int8), h),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=token_schema(t, h))



# --------------------------------------------------------------------------- shard files


def shard_file_name(stem: str, index: int, count: int) -> str:
    """`train.arrow` for a split of one shard, `train-00003-of-00008.arrow` for several."""
    return f"{stem}.arrow" if count == 1 else f"{stem}-{index:05d}-of-{count:05d}.arrow"


def shard_glob(stem: str, count: int) -> str:
    """The glob that matches exactly the shards of a split written as `count` files."""
    return f"{stem}.arrow" if count == 1 else f"{stem}-*-of-{count:05d}.arrow"


def missing_shard_error(path: Path) -> ShardError:
    tmp = path.with_name(path.name + ".tmp")
    hint = (
        " (an unfinished .tmp file is there: its preparation did not complete)"
        if tmp.exists()
        else ""
    )
    return ShardError(
        f"shard {str(path)!r} does not exist{hint}; run the dataset preparation first"
    )


_SET_COLUMNS = {
    "input_ids": np.int32,
    "context_input_ids": np.int32,
    "teacher_hidden": np.float32,
    "gist_target": np.float32,
}


def _missing_columns(table: pa.Table, *, with_states: bool) -> list[str]:
    wanted = ("input_ids", "context_input_ids", "teacher_hidden", "gist_target")
    if not with_states:
        wanted = wanted[:2]
    return [c for c in wanted if c not in table.column_names]


def _file_pieces(path: Path) -> tuple[dict[str, list[np.ndarray]], pa.Table]:
    """One shard file's columns as lists of views, one per record batch (fixed-size (ours)
    and variable-length (the seed's) list columns alike, token-only ones too), and the
    table that keeps the map alive. An empty file gives no pieces. A row whose length
    differs from the others raises ShardError naming the row and the column."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"{str(path)!r} is not an Arrow IPC file: {err}") from None
    where = f"shard {str(path)!r}"
    with_states = "teacher_hidden" in table.column_names
    missing = _missing_columns(table, with_states=with_states)
    if missing:
        raise ShardError(f"{where} lacks column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        return {}, table
    if with_states and all(len(c.flatten()) == 0 for c in table.column("teacher_hidden").chunks):
        # The seed wrote empty rows when its config had no teacher_model.
        raise ShardError(
            f"{where}: teacher_hidden is empty: the shard was prepared without a teacher; "
            f"prepare it again with teacher_model set"
        )

    def pieces(name: str, expected: tuple[int | None, ...]) -> list[np.ndarray]:
        array = _column_array(
            table, name, _SET_COLUMNS[name], expected=expected, where=where, chunked=True
        )
        return array.parts if isinstance(array, ChunkedRows) else [array]

    # The block's length fixes the states' token axis; the states' width fixes the target's.
    columns = {"input_ids": pieces("input_ids", (None,))}
    columns["context_input_ids"] = pieces("context_input_ids", (None,))
    if with_states:
        block = columns["input_ids"][0].shape[1]
        columns["teacher_hidden"] = pieces("teacher_hidden", (block, None))
        width = columns["teacher_hidden"][0].shape[2]
        columns["gist_target"] = pieces("gist_target", (width,))
    return columns, table


def _pieces_of(column: np.ndarray | ChunkedRows) -> list[np.ndarray]:
    return column.parts if isinstance(column, ChunkedRows) else [column]


@dataclass
class ShardSet:
    """A split as a list of memory-mapped shard files behind one row index (one file is a
    set of one).

    Exposes the columns training and evaluation read (`input_ids`, `context_input_ids`,
    and for a dataset with cached states `teacher_hidden`, `gist_target`) as numpy views
    into the mapped file where a column is one record batch, else as ChunkedRows:
    indexing gathers the rows from whichever shard and record batch hold them, without a
    concatenating copy. `teacher_hidden` is None for a token-only dataset.
    """

    paths: list[Path]
    rows_per_file: list[int]
    input_ids: np.ndarray | ChunkedRows  # (N, T) int32
    context_input_ids: np.ndarray | ChunkedRows  # (N, H) int32
    teacher_hidden: np.ndarray | ChunkedRows | None  # (N, T, D) float32, None: token-only
    gist_target: np.ndarray | ChunkedRows | None  # (N, D) float32, None: token-only
    piece_file: list[int]  # the file each piece (record batch) comes from
    keep_alive: list[pa.Table]  # the tables that keep the memory maps alive
    stride: int  # tokens between successive windows of a document (block_size by default)

    @property
    def path(self) -> Path:
        """The first (for a one-file split, the only) shard file."""
        return self.paths[0]

    @property
    def table(self) -> pa.Table:
        """The first shard file's table: its schema and metadata as written."""
        return self.keep_alive[0]

    @property
    def num_examples(self) -> int:
        return len(self.input_ids)

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    @property
    def horizon(self) -> int:
        return self.context_input_ids.shape[1]

    @property
    def has_teacher_states(self) -> bool:
        return self.teacher_hidden is not None

    @property
    def hidden_size(self) -> int | None:
        """The states' width; None for a token-only dataset (its metadata has the width)."""
        return None if self.teacher_hidden is None else self.teacher_hidden.shape[2]

    def document_ids(self) -> np.ndarray:
        """(N,) int64 index of the document each example came from.

        Examples are written in document order, and inside a document the next example's
        window starts `stride` tokens into this example's window (one block, by default),
        so the two overlap; where that chain breaks a new document starts. Windows that do
        not overlap (a horizon of one block at the default stride) cannot be chained: then
        every example counts as its own document. A shard file always starts a document:
        parts are cut at document boundaries. Computed piece by piece, in bounded memory.
        """
        n, s = self.num_examples, self.stride
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if s >= self.horizon:
            return np.arange(n, dtype=np.int64)
        starts_doc = np.ones(n, dtype=bool)
        first = 0
        pieces = _pieces_of(self.context_input_ids)
        for p, window in enumerate(pieces):
            starts_doc[first + 1 : first + len(window)] = ~_follows(window[:-1], window[1:], s)
            if p > 0 and self.piece_file[p] == self.piece_file[p - 1] and len(window):
                previous = pieces[p - 1][-1:]
                starts_doc[first] = not _follows(previous, window[:1], s)[0]
            first += len(window)
        return np.cumsum(starts_doc).astype(np.int64) - 1


def open_shard_set(paths: list[str | Path]) -> ShardSet:
    """Memory-map every shard of a split; they must agree on block, horizon and width.
    An empty shard (a part whose documents were all shorter than the horizon) adds no
    rows; a split with no rows at all is an error."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ShardError("no shard files given")
    columns: dict[str, list[np.ndarray]] = {}
    piece_file: list[int] = []
    rows_per_file: list[int] = []
    keep: list[pa.Table] = []
    first: tuple[Path, dict[str, tuple[int, ...]]] | None = None
    for index, path in enumerate(paths):
        if not path.is_file():
            raise missing_shard_error(path)
        pieces, handle = _file_pieces(path)
        keep.append(handle)
        rows_per_file.append(sum(len(v) for v in pieces.get("input_ids", [])))
        if not pieces:
            continue
        shapes = {c: p[0].shape[1:] for c, p in pieces.items()}
        shapes["stride"] = (stride_of(handle.schema, shapes["input_ids"][0]),)
        if first is None:
            first = (path, shapes)
            columns = {c: [] for c in pieces}
        elif shapes != first[1]:
            raise ShardError(
                f"shard {str(path)!r} does not match {str(first[0])!r}: "
                f"{_describe_shapes(shapes)} against {_describe_shapes(first[1])}; the "
                f"shards of one split come from one preparation"
            )
        for c, p in pieces.items():
            columns[c].extend(p)
        piece_file.extend([index] * len(pieces["input_ids"]))
    if first is None:
        if len(paths) == 1:
            raise ShardError(f"shard {str(paths[0])!r} holds no examples")
        raise ShardError(f"{str(paths[0])!r} and the other shards of its split hold no examples")

    def rows(name: str) -> np.ndarray | ChunkedRows | None:
        if name not in columns:
            return None
        return columns[name][0] if len(columns[name]) == 1 else ChunkedRows(columns[name])

    return ShardSet(
        paths=paths,
        rows_per_file=rows_per_file,
        input_ids=rows("input_ids"),
        context_input_ids=rows("context_input_ids"),
        teacher_hidden=rows("teacher_hidden"),
        gist_target=rows("gist_target"),
        piece_file=piece_file,
        keep_alive=keep,
        stride=first[1]["stride"][0],
    )


def open_shard(path: str | Path) -> ShardSet:
    """One shard file with cached teacher states, as a set of one."""
    shards = open_shard_set([path])
    if not shards.has_teacher_states:
        raise ShardError(f"shard {str(path)!r} lacks column(s) teacher_hidden, gist_target")
    return shards


def _describe_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    block, horizon = shapes["input_ids"][0], shapes["context_input_ids"][0]
    width = shapes.get("teacher_hidden", (None, None))[1]
    states = f"states {width} wide" if width else "no teacher states"
    return f"blocks of {block}, horizon {horizon}, stride {shapes['stride'][0]}, {states}"
