"""A split's examples, from text to one shard: documents tokenized a chunk at a time, cut
into windows (`document_examples`), run through the teacher in batches of
`teacher_batch_size` (unless `teacher_states: none`) and written as record batches into a
shard that takes its name only when whole. Peak memory depends on the batch, not on the
corpus. `gistnet.data` plans the parts and finalizes the dataset around this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gistnet.config import DatasetConfig
from gistnet.devices import resolve_device
from gistnet.errors import Cancelled, ConfigError
from gistnet.files import atomic_write
from gistnet.pipeline import BackgroundWriter, prefetched
from gistnet.shards import (
    make_record_batch,
    make_token_batch,
    shard_schema,
    token_schema,
    with_stride,
)
from gistnet.teacher import (
    block_hidden_states,
    check_tokenizer_fits,
    hidden_size_of,
    load_teacher,
    load_tokenizer,
)

_TOKENIZE_CHUNK = 256  # documents tokenized per call: fast batch encoding, bounded memory
# ... and at most this many characters, or one longer document alone: the tokenizer's peak
# grows with the text of its call (about 150 MiB a MiB, docs/benchmarks.md), so it stays
# that of the longest document allowed (sources.max_document_bytes).
TOKENIZE_CHUNK_CHARS = 1 << 20
# Rows per record batch of a token-only shard: there is no teacher batch to follow, and a
# few MB a batch keeps the file's per-batch overhead negligible.
_TOKEN_BATCH_ROWS = 8192
# The windows read and tokenized ahead of the teacher, in bytes: more than a tokenizer
# call's worth (TOKENIZE_CHUNK_CHARS of text) at the usual strides, so the next call runs
# while the teacher reads the last one's.
_PREFETCH_BYTES = 64 << 20

# --------------------------------------------------------------------------- reading text


def _chunks(texts: Iterator[str], size: int, max_chars: int) -> Iterator[list[str]]:
    """Lists of at most `size` texts, each ended once its texts hold `max_chars` (a text
    longer than that is a chunk of its own)."""
    chunk: list[str] = []
    chars = 0
    for text in texts:
        if chunk and chars + len(text) > max_chars:
            yield chunk
            chunk, chars = [], 0
        chunk.append(text)
        chars += len(text)
        if len(chunk) == size:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _token_documents(
    texts: Iterator[str], tokenizer, max_tokens: int | None
) -> Iterator[list[int]]:
    """Token ids per document, in order; stops after `max_tokens` tokens in all."""
    budget = max_tokens if max_tokens is not None else float("inf")
    for chunk in _chunks(texts, _TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS):
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if budget <= 0:
                return
            ids = ids[: int(min(len(ids), budget))]
            budget -= len(ids)
            yield ids


def document_examples(
    ids: list[int] | np.ndarray, block_size: int, horizon: int, stride: int | None = None
) -> np.ndarray:
    """(E, horizon) windows of one document: window e starts at token e * stride (stride
    defaults to block_size: one window per block, the partial tail block dropped) and every
    window lies inside the document.
    """
    ids = np.asarray(ids, dtype=np.int32)
    stride = stride or block_size
    count = (len(ids) - horizon) // stride + 1 if len(ids) >= horizon else 0
    if count <= 0:
        return np.zeros((0, horizon), dtype=np.int32)
    starts = np.arange(count) * stride
    return ids[starts[:, None] + np.arange(horizon)[None, :]]


@dataclass
class PrepResources:
    """What preparing loads: the tokenizer, the teacher (None for a token-only dataset) and
    its width and vocabulary. Loading a big teacher takes long, so a worker that prepares
    many parts loads them once (`load_prep_resources`) and passes them to each part."""

    tokenizer: Any
    teacher: Any | None
    hidden_size: int
    vocab_size: int


def load_prep_resources(config: DatasetConfig) -> PrepResources:
    """Tokenizer and teacher for `config` (model references already absolute). A token-only
    dataset reads only the teacher's config: its width and vocabulary, never its weights."""
    tokenizer = load_tokenizer(config.tokenizer)
    teacher = None
    if config.teacher_states == "cache":
        device = resolve_device(config.teacher_device)
        teacher = load_teacher(config.teacher_model, dtype=config.teacher_dtype, device=device)
        hidden_size = hidden_size_of(teacher)
        vocab_size = int(teacher.get_input_embeddings().weight.shape[0])
    else:
        from gistnet.teacher import check_teacher_family, config_hidden_size, load_teacher_config

        teacher_config = load_teacher_config(config.teacher_model)
        check_teacher_family(teacher_config)  # training on the ids would run it
        hidden_size = config_hidden_size(teacher_config)
        vocab_size = int(teacher_config.vocab_size)
    check_tokenizer_fits(
        tokenizer, vocab_size, tokenizer_name=config.tokenizer, teacher_name=config.teacher_model
    )
    return PrepResources(tokenizer, teacher, hidden_size, vocab_size)


# --------------------------------------------------------------------------- one shard


def shard_schema_of(config: DatasetConfig, split: str, hidden_size: int) -> pa.Schema:
    if config.teacher_states == "none":
        schema = token_schema(config.block_size, config.horizon)
    else:
        schema = shard_schema(config.block_size, config.horizon, hidden_size)
    return with_stride(schema, config.split_stride(split), config.block_size)


def write_shard(
    *,
    what: str,
    split: str,
    windows: Iterator[np.ndarray],
    out_path: Path,
    config: DatasetConfig,
    resources: PrepResources,
    counters: dict[str, int],
    on_batch: Callable[[], None],
    should_cancel: Callable[[], bool] | None,
) -> None:
    """Write the examples of `windows` ((E, horizon) arrays) as one shard, atomically."""
    t, teacher = config.block_size, resources.teacher
    rows = config.teacher_batch_size if teacher is not None else _TOKEN_BATCH_ROWS
    schema = shard_schema_of(config, split, resources.hidden_size)
    pending: list[np.ndarray] = []
    pending_rows = 0

    def flush(out: BackgroundWriter) -> None:
        nonlocal pending, pending_rows
        context = np.concatenate(pending)
        pending, pending_rows = [], 0
        for start in range(0, len(context), rows):
            ctx = context[start : start + rows]
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"dataset preparation cancelled during {what}")
            states = None
            if teacher is not None:
                blocks = torch.from_numpy(np.ascontiguousarray(ctx[:, :t])).long()
                states = block_hidden_states(teacher, blocks).cpu().numpy()
            out.submit((ctx, states))
            counters["examples"] += len(ctx)
            on_batch()

    def record_batch(ctx: np.ndarray, states: np.ndarray | None) -> pa.RecordBatch:
        if states is None:
            return make_token_batch(input_ids=ctx[:, :t], context_input_ids=ctx)
        return make_record_batch(input_ids=ctx[:, :t], context_input_ids=ctx, teacher_hidden=states)

    # Text is read and tokenized a few chunks ahead, and batches are built and written
    # behind, each in a thread of its own, while this one runs the teacher.
    with (
        atomic_write(out_path, what=f"the {split} shard {out_path.name}") as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, schema) as writer,
        BackgroundWriter(lambda item: writer.write_batch(record_batch(*item))) as out,
    ):
        for win in prefetched(windows, budget=_PREFETCH_BYTES, size=lambda w: w.nbytes + 256):
            pending.append(win)
            pending_rows += len(win)
            if pending_rows >= rows:
                flush(out)
        if pending_rows:
            flush(out)


def no_examples(name: str, config: DatasetConfig) -> ConfigError:
    return ConfigError(
        f"split {name!r} produced no examples: no document has {config.horizon} tokens "
        f"(the horizon); give longer documents or a smaller horizon"
    )


def examples_of(
    texts: Iterator[str],
    *,
    split: str,
    config: DatasetConfig,
    tokenizer,
    counters: dict[str, int],
    bar,
) -> Iterator[np.ndarray]:
    stride = config.split_stride(split)
    for ids in _token_documents(texts, tokenizer, config.splits[split].max_tokens):
        counters["documents"] += 1
        counters["tokens"] += len(ids)
        counters["blocks"] += len(ids) // config.block_size
        if bar is not None:
            bar.update(len(ids))
        windows = document_examples(ids, config.block_size, config.horizon, stride)
        if len(windows):  # a document shorter than the horizon gives none
            yield windows
