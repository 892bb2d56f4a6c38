"""The Arrow shard format: schema, record-batch building, and zero-copy reading.

Every column is a fixed-size list, so a reader that memory-maps the file sees each
column as one contiguous buffer and can view teacher_hidden as an (N, T, D) array
without copying. Shards written by other tools with variable-length lists are read too
(with one copy, since their values are not laid out as a regular array).
"""

from __future__ import annotations

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
