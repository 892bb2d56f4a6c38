"""Dataset preparation: text -> token blocks -> teacher states -> Arrow shards.

The work streams: documents are tokenized a chunk at a time, blocks are run through the
teacher in batches of `teacher_batch_size`, and each batch is written as a record batch,
so peak memory depends on the batch, not on the corpus. A split is written under a
temporary name and renamed only when complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml

from gistnet.config import DatasetConfig, SplitConfig
from gistnet.devices import resolve_device
from gistnet.errors import Cancelled, ConfigError
from gistnet.shards import METADATA_FILE, make_record_batch, shard_schema
from gistnet.teacher import block_hidden_states, hidden_size_of, load_teacher, load_tokenizer

_TOKENIZE_CHUNK = 256  # documents tokenized per call: fast batch encoding, bounded memory


@dataclass
class PrepProgress:
    split: str
    documents: int
    tokens: int
    examples: int


# --------------------------------------------------------------------------- reading text


def _source_files(split_name: str, split: SplitConfig, base_dir: Path) -> list[Path]:
    pattern = split.source if os.path.isabs(split.source) else str(base_dir / split.source)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(
            f"split {split_name!r}: source {split.source!r} matches no file "
            f"(looked for {pattern!r}; relative sources are read from the config file's folder)"
        )
    bad = [f.name for f in files if f.suffix not in (".txt", ".jsonl")]
    if bad:
        raise ConfigError(
            f"split {split_name!r}: cannot read {', '.join(bad[:3])}: sources must be .txt "
            f'(one document per file) or .jsonl (one {{"text": ...}} per line)'
        )
    return files[: split.max_files] if split.max_files else files


def _read_documents(files: list[Path]) -> Iterator[str]:
    for path in files:
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
            continue
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(
                        f"{path}:{lineno}: each line of a .jsonl source must be an object with "
                        f'a "text" string'
                    ) from None
                yield text


def _documents(split_name: str, split: SplitConfig, base_dir: Path) -> Iterator[str]:
    if split.documents is not None:
        return iter(split.documents)
    return _read_documents(_source_files(split_name, split, base_dir))


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _token_documents(
    texts: Iterator[str], tokenizer, max_tokens: int | None
) -> Iterator[list[int]]:
    """Token ids per document, in order; stops after `max_tokens` tokens in all."""
    budget = max_tokens if max_tokens is not None else float("inf")
    for chunk in _chunks(texts, _TOKENIZE_CHUNK):
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if budget <= 0:
                return
            ids = ids[: int(min(len(ids), budget))]
            budget -= len(ids)
            yield ids


def document_examples(ids: list[int] | np.ndarray, block_size: int, horizon: int) -> np.ndarray:
    """(E, horizon) windows of one document: one per block whose window fits in the document.

    The partial tail block is dropped. Window e starts at token e * block_size.
    """
    ids = np.asarray(ids, dtype=np.int32)
    blocks = len(ids) // block_size
    count = blocks - horizon // block_size + 1
    if count <= 0:
        return np.zeros((0, horizon), dtype=np.int32)
    starts = np.arange(count) * block_size
    return ids[starts[:, None] + np.arange(horizon)[None, :]]


# --------------------------------------------------------------------------- fingerprint


def _hash_file(h, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def _model_identity(name: str) -> str:
    """Content hash of a local model folder's small files plus weight sizes; the id otherwise."""
    path = Path(name)
    if not path.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        h.update(str(f.relative_to(path)).encode())
        if f.stat().st_size <= 16 << 20:
            _hash_file(h, f)
        else:  # multi-GB weights: name and size identify them well enough
            h.update(str(f.stat().st_size).encode())
    return h.hexdigest()


def dataset_fingerprint(config: DatasetConfig, base_dir: Path) -> str:
    """Changes whenever the stored data would: config values, input text, teacher, tokenizer."""
    h = hashlib.sha256()
    data_fields = config.model_dump(include={"block_size", "horizon", "teacher_dtype"})
    h.update(json.dumps(data_fields, sort_keys=True).encode())
    h.update(_model_identity(config.teacher_model).encode())
    h.update(_model_identity(config.tokenizer).encode())
    for name in sorted(config.splits):
        split = config.splits[name]
        h.update(json.dumps([name, split.max_files, split.max_tokens]).encode())
        if split.documents is not None:
            for doc in split.documents:
                h.update(hashlib.sha256(doc.encode()).digest())
        else:
            for f in _source_files(name, split, base_dir):
                h.update(f.name.encode())
                _hash_file(h, f)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- writing


def resolve_model_ref(name: str, base_dir: Path) -> str:
    """A local folder named relative to the config file (or the working directory) becomes
    an absolute path, so workers and later runs find it; a hub id stays as it is."""
    for candidate in (base_dir / name, Path(name).expanduser()):
        if candidate.is_dir():
            return str(candidate.resolve())
    return name


def _output_path(name: str, split: SplitConfig, base_dir: Path, output_dir: Path | None) -> Path:
    if output_dir is not None:
        return output_dir / f"{name}.arrow"
    if split.output_path is None:
        raise ConfigError(f"split {name!r} has no output_path (a file path for its Arrow shard)")
    out = Path(split.output_path)
    return (out if out.is_absolute() else base_dir / out).resolve()


def _write_split(
    *,
    name: str,
    windows: Iterator[np.ndarray],
    out_path: Path,
    teacher,
    config: DatasetConfig,
    hidden_size: int,
    counters: dict[str, int],
    on_batch: Callable[[], None],
    should_cancel: Callable[[], bool] | None,
) -> None:
    t, bs = config.block_size, config.teacher_batch_size
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    schema = shard_schema(t, config.horizon, hidden_size)
    pending: list[np.ndarray] = []
    pending_rows = 0

    def flush(writer) -> None:
        nonlocal pending, pending_rows
        context = np.concatenate(pending)
        pending, pending_rows = [], 0
        for start in range(0, len(context), bs):
            ctx = context[start : start + bs]
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"dataset preparation cancelled during split {name!r}")
            blocks = torch.from_numpy(np.ascontiguousarray(ctx[:, :t])).long()
            states = block_hidden_states(teacher, blocks).cpu().numpy()
            writer.write_batch(
                make_record_batch(
                    input_ids=ctx[:, :t], context_input_ids=ctx, teacher_hidden=states
                )
            )
            counters["examples"] += len(ctx)
            on_batch()

    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for win in windows:
                if len(win):
                    pending.append(win)
                    pending_rows += len(win)
                if pending_rows >= bs:
                    flush(writer)
            if pending_rows:
                flush(writer)
        if counters["examples"] == 0:
            raise ConfigError(
                f"split {name!r} produced no examples: no document has {config.horizon} tokens "
                f"(the horizon); give longer documents or a smaller horizon"
            )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_split(
    *,
    name: str,
    split: SplitConfig,
    config: DatasetConfig,
    base_dir: Path,
    out_path: Path,
    tokenizer,
    teacher,
    hidden_size: int,
    bar,
    on_progress: Callable[[PrepProgress], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    counters = {"documents": 0, "tokens": 0, "blocks": 0, "examples": 0}
    if bar is not None:
        bar.set_description(name)

    def windows() -> Iterator[np.ndarray]:
        texts = _documents(name, split, base_dir)
        for ids in _token_documents(texts, tokenizer, split.max_tokens):
            counters["documents"] += 1
            counters["tokens"] += len(ids)
            counters["blocks"] += len(ids) // config.block_size
            if bar is not None:
                bar.update(len(ids))
            yield document_examples(ids, config.block_size, config.horizon)

    def report() -> None:
        if on_progress is not None:
            on_progress(
                PrepProgress(name, counters["documents"], counters["tokens"], counters["examples"])
            )

    _write_split(
        name=name,
        windows=windows(),
        out_path=out_path,
        teacher=teacher,
        config=config,
        hidden_size=hidden_size,
        counters=counters,
        on_batch=report,
        should_cancel=should_cancel,
    )
    report()
    return {
        "path": str(out_path),
        **counters,
        "bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
    }


def prepare_dataset(
    config: DatasetConfig,
    *,
    config_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    on_progress: Callable[[PrepProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Tokenize, cut into blocks, run the teacher and write one Arrow shard per split.

    Relative `source` and `output_path` values are read from `config_dir` (the config
    file's folder). With `output_dir`, every split goes to `<output_dir>/<split>.arrow`.
    Returns the metadata, also written as metadata.yaml beside the shards.
    """
    base_dir = Path(config_dir or ".").resolve()
    config = config.model_copy(
        update={
            "teacher_model": resolve_model_ref(config.teacher_model, base_dir),
            "tokenizer": resolve_model_ref(config.tokenizer, base_dir),
        }
    )
    out_dir = Path(output_dir).resolve() if output_dir is not None else None
    outputs = {n: _output_path(n, s, base_dir, out_dir) for n, s in config.splits.items()}
    fingerprint = dataset_fingerprint(config, base_dir)  # also checks every source exists

    tokenizer = load_tokenizer(config.tokenizer)
    device = resolve_device(config.teacher_device)
    teacher = load_teacher(config.teacher_model, dtype=config.teacher_dtype, device=device)
    hidden_size = hidden_size_of(teacher)
    vocab_size = int(teacher.get_input_embeddings().weight.shape[0])
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but teacher "
            f"{config.teacher_model!r} embeds only {vocab_size}: they do not belong together"
        )

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, dynamic_ncols=True)

    split_stats = {
        name: _prepare_split(
            name=name,
            split=split,
            config=config,
            base_dir=base_dir,
            out_path=outputs[name],
            tokenizer=tokenizer,
            teacher=teacher,
            hidden_size=hidden_size,
            bar=bar,
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
        for name, split in config.splits.items()
    }
    if bar is not None:
        bar.close()

    metadata = {
        "dataset_name": config.dataset_name,
        "tokenizer": config.tokenizer,
        "teacher_model": config.teacher_model,
        "teacher_dtype": config.teacher_dtype,
        "block_size": config.block_size,
        "horizon": config.horizon,
        "teacher_hidden_size": hidden_size,
        "vocab_size": vocab_size,
        "fingerprint": fingerprint,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": split_stats,
    }
    _write_metadata(metadata, outputs)
    return metadata


def _write_metadata(metadata: dict[str, Any], outputs: dict[str, Path]) -> None:
    """metadata.yaml in every folder that holds a shard; shard paths relative to it."""
    for folder in sorted({p.parent for p in outputs.values()}):
        local = dict(metadata)
        local["splits"] = {
            name: {**stats, "path": os.path.relpath(outputs[name], folder)}
            for name, stats in metadata["splits"].items()
        }
        tmp = folder / (METADATA_FILE + ".tmp")
        tmp.write_text(yaml.safe_dump(local, sort_keys=False))
        os.replace(tmp, folder / METADATA_FILE)
