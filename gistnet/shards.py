"""The Arrow shard format: schema, record-batch building, and zero-copy reading.

Every column is a fixed-size list, so a reader that memory-maps the file sees each
column as one contiguous buffer and can view teacher_hidden as an (N, T, D) array
without copying. Shards written by other tools with variable-length lists are read too
(with one copy, since their values are not laid out as a regular array).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from gistnet.errors import ShardError

METADATA_FILE = "metadata.yaml"
COLUMNS = (
    "input_ids",
    "attention_mask",
    "context_input_ids",
    "context_attention_mask",
    "teacher_hidden",
    "gist_target",
)


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


def _column_array(table: pa.Table, name: str, dtype: np.dtype) -> np.ndarray:
    """Column -> numpy array of shape (N, *inner), zero-copy for fixed-size lists."""
    column = table.column(name)
    chunks = column.chunks if column.num_chunks else []
    shape: list[int] = []
    typ = column.type
    while pa.types.is_fixed_size_list(typ):
        shape.append(typ.list_size)
        typ = typ.value_type
    if shape and len(chunks) == 1 and chunks[0].offset == 0 and chunks[0].null_count == 0:
        flat = chunks[0]
        for _ in shape:
            flat = flat.values
        values = flat.to_numpy(zero_copy_only=True)
        return values.reshape(len(table), *shape).astype(dtype, copy=False)
    if shape:  # several chunks of fixed-size lists: one concatenating copy
        return _column_array(pa.table({name: column.combine_chunks()}), name, dtype)
    # Variable-length lists (other tools' output): nested Python lists, then one array.
    try:
        return np.asarray(column.to_pylist(), dtype=dtype)
    except ValueError as err:
        raise ShardError(f"column {name!r} has rows of different lengths: {err}") from None


@dataclass
class Shard:
    """A shard's columns as numpy arrays (views into the memory-mapped file when possible)."""

    path: Path
    input_ids: np.ndarray  # (N, T) int32
    context_input_ids: np.ndarray  # (N, H) int32
    teacher_hidden: np.ndarray  # (N, T, D) float32
    gist_target: np.ndarray  # (N, D) float32
    table: pa.Table  # keeps the memory map alive

    @property
    def num_examples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    @property
    def horizon(self) -> int:
        return self.context_input_ids.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.teacher_hidden.shape[2]

    def document_ids(self) -> np.ndarray:
        """(N,) int64 index of the document each example came from.

        Examples are written in document order, and inside a document the next example's
        block is the second block of this example's window. Where that chain breaks a new
        document starts. Needs a horizon of at least two blocks; with one block every
        example counts as its own document.
        """
        t = self.block_size
        if self.num_examples == 0:
            return np.zeros(0, dtype=np.int64)
        if self.horizon < 2 * t:
            return np.arange(self.num_examples, dtype=np.int64)
        follows = np.all(self.context_input_ids[:-1, t : 2 * t] == self.input_ids[1:], axis=1)
        return np.concatenate([[0], np.cumsum(~follows)]).astype(np.int64)


def open_shard(path: str | Path) -> Shard:
    path = Path(path)
    if not path.is_file():
        tmp = path.with_name(path.name + ".tmp")
        hint = (
            " (an unfinished .tmp file is there: its preparation did not complete)"
            if tmp.exists()
            else ""
        )
        raise ShardError(
            f"shard {str(path)!r} does not exist{hint}; run the dataset preparation first"
        )
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except pa.ArrowInvalid as err:
        raise ShardError(f"{str(path)!r} is not an Arrow IPC file: {err}") from None
    missing = [
        c
        for c in ("input_ids", "context_input_ids", "teacher_hidden", "gist_target")
        if c not in table.column_names
    ]
    if missing:
        raise ShardError(f"shard {str(path)!r} lacks column(s) {', '.join(missing)}")
    shard = Shard(
        path=path,
        input_ids=_column_array(table, "input_ids", np.int32),
        context_input_ids=_column_array(table, "context_input_ids", np.int32),
        teacher_hidden=_column_array(table, "teacher_hidden", np.float32),
        gist_target=_column_array(table, "gist_target", np.float32),
        table=table,
    )
    if shard.teacher_hidden.ndim != 3 or shard.input_ids.ndim != 2:
        raise ShardError(
            f"shard {str(path)!r}: teacher_hidden must be (N, T, D), got {shard.teacher_hidden.shape}"
        )
    if shard.teacher_hidden.shape[1] != shard.block_size:
        raise ShardError(
            f"shard {str(path)!r}: teacher_hidden covers {shard.teacher_hidden.shape[1]} tokens "
            f"but input_ids has {shard.block_size}"
        )
    return shard


def metadata_path(path: str | Path) -> Path:
    """metadata.yaml for a dataset folder, or for the folder holding a shard."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / METADATA_FILE


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta = metadata_path(path)
    if not meta.is_file():
        raise ShardError(
            f"no {METADATA_FILE} beside {str(path)!r}: the dataset preparation writes it next to "
            f"the shards; prepare the dataset again or copy it along"
        )
    return yaml.safe_load(meta.read_text())


def split_path(metadata: dict[str, Any], dataset_dir: str | Path, split: str) -> Path:
    splits = metadata.get("splits", {})
    if split not in splits:
        raise ShardError(f"dataset has no split {split!r}; it has {', '.join(splits) or 'none'}")
    return Path(dataset_dir) / splits[split]["path"]


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


# --------------------------------------------------------------------------- many-shard splits

# Hugging Face datasets' names for the shards of a split: train-00000-of-00008.arrow.
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.arrow$")
_GLOB_CHARS = ("*", "?", "[")


def shard_file_name(stem: str, index: int, count: int) -> str:
    """`train.arrow` for a split of one shard, `train-00003-of-00008.arrow` for several."""
    return f"{stem}.arrow" if count == 1 else f"{stem}-{index:05d}-of-{count:05d}.arrow"


def shard_glob(stem: str, count: int) -> str:
    """The glob that matches exactly the shards of a split written as `count` files."""
    return f"{stem}.arrow" if count == 1 else f"{stem}-*-of-{count:05d}.arrow"


class StackedRows:
    """An (N, ...) array made of pieces (the record batches of one or many shard files)
    stacked behind one row index and gathered on indexing: the pieces are views into the
    memory-mapped files and are never concatenated.

    Supports what training and evaluation do with a column: `shape`, `len`, and indexing
    rows by an int, a slice or an index array (-> a new ndarray of just those rows).
    """

    def __init__(self, pieces: list[np.ndarray], inner: tuple[int, ...], dtype: np.dtype):
        self.pieces = pieces
        self.starts = np.cumsum([0] + [len(p) for p in pieces])  # (pieces + 1,)
        self.shape = (int(self.starts[-1]), *inner)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, key) -> np.ndarray:
        """The global row numbers a key selects, as int64."""
        if isinstance(key, int | np.integer):
            rows = np.asarray([key], dtype=np.int64)
        elif isinstance(key, slice):
            rows = np.arange(*key.indices(len(self)), dtype=np.int64)
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise TypeError("index rows with an int, a slice or a 1-d index array")
            rows = rows.astype(np.int64, copy=False)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return rows

    def __getitem__(self, key) -> np.ndarray:
        rows = self.rows(key)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        piece = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(piece):
            sel = piece == p
            out[sel] = self.pieces[p][rows[sel] - self.starts[p]]
        return out[0] if isinstance(key, int | np.integer) else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def _fixed_view(chunk: pa.Array, dtype: type[np.generic]) -> np.ndarray | None:
    """A chunk of (nested) fixed-size lists as a (rows, *sizes) view of its values, or None
    when it is not that (variable-length lists, nulls): then the caller reads it otherwise."""
    sizes: list[int] = []
    values = chunk
    while pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            return None
        sizes.append(values.type.list_size)
        values = values.flatten()  # honours the chunk's offset: these rows' values only
    if not sizes or values.null_count:
        return None
    try:
        flat = values.to_numpy(zero_copy_only=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return flat.reshape(len(chunk), *sizes).astype(dtype, copy=False)


_SET_COLUMNS = {
    "input_ids": np.int32,
    "context_input_ids": np.int32,
    "teacher_hidden": np.float32,
    "gist_target": np.float32,
}


def _file_pieces(path: Path) -> tuple[dict[str, list[np.ndarray]], Any]:
    """One shard file's columns as lists of per-record-batch views, and what keeps the
    memory map alive. Layouts other than our fixed-size lists go through `open_shard`."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"{str(path)!r} is not an Arrow IPC file: {err}") from None
    names = set(reader.schema.names)
    for column in ("input_ids", "context_input_ids"):
        if column not in names:
            raise ShardError(f"shard {str(path)!r} lacks column {column!r}")
    with_states = "teacher_hidden" in names and "gist_target" in names
    wanted = list(_SET_COLUMNS) if with_states else ["input_ids", "context_input_ids"]
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        if batch.num_rows == 0:
            continue
        views = {c: _fixed_view(batch.column(c), _SET_COLUMNS[c]) for c in wanted}
        if any(v is None for v in views.values()):
            if not with_states:
                raise ShardError(
                    f"shard {str(path)!r}: token columns must be fixed-size lists of numbers"
                )
            shard = open_shard(path)  # another tool's layout: read as the single shard reader does
            return {c: [np.asarray(getattr(shard, c))] for c in wanted}, shard
        for c in wanted:
            pieces[c].append(views[c])
    if not pieces["input_ids"]:  # an empty shard still says what its rows would look like
        for c in wanted:
            sizes = []
            typ = reader.schema.field(c).type
            while pa.types.is_fixed_size_list(typ):
                sizes.append(typ.list_size)
                typ = typ.value_type
            pieces[c].append(np.zeros((0, *sizes), dtype=_SET_COLUMNS[c]))
    return pieces, reader


@dataclass
class ShardSet:
    """A split as a list of memory-mapped shard files behind one row index.

    Exposes the columns training and evaluation read (`input_ids`, `context_input_ids`,
    and for a dataset with cached states `teacher_hidden`, `gist_target`) as StackedRows:
    indexing gathers the rows from whichever shard and record batch hold them, without a
    concatenating copy. `teacher_hidden` is None for a token-only dataset.
    """

    paths: list[Path]
    rows_per_file: list[int]
    input_ids: StackedRows  # (N, T) int32
    context_input_ids: StackedRows  # (N, H) int32
    teacher_hidden: StackedRows | None  # (N, T, D) float32, None: token-only
    gist_target: StackedRows | None  # (N, D) float32, None: token-only
    piece_file: list[int]  # the file each piece (record batch) comes from
    keep_alive: list[Any]

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

        Inside a shard, examples follow in document order and the next example's block is
        the second block of this example's window; where that chain breaks a new document
        starts (see `Shard.document_ids`). A shard file always starts a document: parts
        are cut at document boundaries. Computed piece by piece, in bounded memory.
        """
        n, t = self.num_examples, self.block_size
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self.horizon < 2 * t:
            return np.arange(n, dtype=np.int64)
        starts_doc = np.ones(n, dtype=bool)
        ids, ctx = self.input_ids, self.context_input_ids
        for p, (block, window) in enumerate(zip(ids.pieces, ctx.pieces, strict=True)):
            first = int(ids.starts[p])
            follows = np.all(window[:-1, t : 2 * t] == block[1:], axis=1)
            starts_doc[first + 1 : first + len(block)] = ~follows
            if p > 0 and self.piece_file[p] == self.piece_file[p - 1] and len(block):
                previous = ctx.pieces[p - 1][-1]
                starts_doc[first] = not np.array_equal(previous[t : 2 * t], block[0])
        return np.cumsum(starts_doc).astype(np.int64) - 1


def open_shard_set(paths: list[str | Path]) -> ShardSet:
    """Memory-map every shard of a split; they must agree on block, horizon and width."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ShardError("no shard files given")
    columns: dict[str, list[np.ndarray]] = {}
    piece_file: list[int] = []
    rows_per_file: list[int] = []
    keep: list[Any] = []
    first_shapes: dict[str, tuple[int, ...]] | None = None
    for index, path in enumerate(paths):
        if not path.is_file():
            open_shard(path)  # raises the missing-shard error, with its .tmp hint
        pieces, handle = _file_pieces(path)
        keep.append(handle)
        shapes = {c: p[0].shape[1:] for c, p in pieces.items()}
        if first_shapes is None:
            first_shapes = shapes
            columns = {c: [] for c in pieces}
        elif shapes != first_shapes:
            raise ShardError(
                f"shard {str(path)!r} does not match {str(paths[0])!r}: "
                f"{_describe_shapes(shapes)} against {_describe_shapes(first_shapes)}; the "
                f"shards of one split come from one preparation"
            )
        for c, p in pieces.items():
            columns[c].extend(p)
        piece_file.extend([index] * len(pieces["input_ids"]))
        rows_per_file.append(sum(len(v) for v in pieces["input_ids"]))

    def stacked(name: str) -> StackedRows | None:
        if name not in columns:
            return None
        return StackedRows(columns[name], first_shapes[name], _SET_COLUMNS[name])

    shard_set = ShardSet(
        paths=paths,
        rows_per_file=rows_per_file,
        input_ids=stacked("input_ids"),
        context_input_ids=stacked("context_input_ids"),
        teacher_hidden=stacked("teacher_hidden"),
        gist_target=stacked("gist_target"),
        piece_file=piece_file,
        keep_alive=keep,
    )
    if (
        shard_set.teacher_hidden is not None
        and shard_set.teacher_hidden.shape[1] != shard_set.block_size
    ):
        raise ShardError(
            f"shard {str(paths[0])!r}: teacher_hidden covers {shard_set.teacher_hidden.shape[1]} "
            f"tokens but input_ids has {shard_set.block_size}"
        )
    return shard_set


def _describe_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    block, horizon = shapes["input_ids"][0], shapes["context_input_ids"][0]
    width = shapes.get("teacher_hidden", (None, None))[1]
    states = f"states {width} wide" if width else "no teacher states"
    return f"blocks of {block}, horizon {horizon}, {states}"


def split_shard_paths(
    path: str | Path, split: str | None = None, *, default_split: str = "train"
) -> list[Path]:
    """The shard files of a split, from any of: a dataset folder (then `split`, default
    `default_split`, names the split and metadata.yaml lists its shards), a glob of shard
    files (`data/x/train-*.arrow`), or one shard file."""
    text = str(path)
    path = Path(path)
    if path.is_dir():
        metadata = read_metadata(path)
        name = split or default_split
        splits = metadata.get("splits") or {}
        if name not in splits:
            raise ShardError(
                f"dataset {str(path)!r} has no split {name!r}; it has {', '.join(splits) or 'none'}"
            )
        listed = splits[name].get("shards")
        if not listed:
            return split_shard_paths(path / splits[name]["path"])
        files = [path / entry["path"] for entry in listed]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ShardError(
                f"split {name!r} of {str(path)!r} has {len(files) - len(missing)} of its "
                f"{len(files)} shards: {', '.join(missing[:3])} missing; copy the whole folder"
            )
        return files
    if path.is_file():
        return [path]
    if any(c in text for c in _GLOB_CHARS):
        files = sorted(Path(m) for m in glob.glob(text) if Path(m).is_file())
        if not files:
            raise ShardError(f"{text!r} matches no shard file")
        return files
    open_shard(path)  # raises the missing-shard error
    return [path]


def open_split(
    path: str | Path, split: str | None = None, *, default_split: str = "train"
) -> ShardSet:
    """`open_shard_set(split_shard_paths(...))`: a folder, a glob or a file."""
    return open_shard_set(split_shard_paths(path, split, default_split=default_split))
