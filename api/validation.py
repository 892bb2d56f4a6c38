"""Checks made before anything is queued, each failing with a message a person can act on.

They raise `RequestProblem`, which the app answers with its status code (422 unless said).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from gistnet.config import DatasetConfig, RunConfig
from gistnet.errors import ConfigError, GistNetError, StorageError
from gistnet.sources import source_kind
from gistnet.storage import ArtifactStore
from service.limits import LIMITS


class RequestProblem(Exception):
    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


# --------------------------------------------------------------------------- any request


def unstorable_text(value: Any, where: str = "") -> str | None:
    """The first string in a JSON value that no database can keep, described; else None.

    PostgreSQL refuses a NUL character in text and JSON, and no database (nor the UTF-8
    of the wire) can hold half of a surrogate pair, which JSON's \\ud800 escapes allow.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where or 'body'}: contains a NUL character (\\u0000), which cannot be stored; remove it"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return (
                f"{where or 'body'}: contains half of a surrogate pair, which is not text; "
                f"send valid UTF-16 escapes or plain UTF-8"
            )
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            problem = unstorable_text(key, path) or unstorable_text(item, path)
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = unstorable_text(item, f"{where}[{index}]")
            if problem:
                return problem
    return None


def _values_at(data: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
    if not parts:
        yield where, data
        return
    head, rest = parts[0], parts[1:]
    if not isinstance(data, dict):
        return
    keys = list(data) if head == "*" else [head] if head in data else []
    for key in keys:
        yield from _values_at(data[key], rest, f"{where}.{key}" if where else str(key))


def check_limits(body: Any, *, route: str, limits: dict[str, int | float]) -> None:
    """Each number of the request against its bound (service/limits.py), which the
    operator can raise; a value above it names the field, the bound and the setting."""
    data = body.model_dump()
    for name, limit in LIMITS.items():
        if limit.route != route:
            continue
        for where, value in _values_at(data, name.split("."), ""):
            if value is not None and value > limits[name]:
                raise RequestProblem(
                    f"{where} is {value}; this server takes at most {limits[name]} "
                    f"(the operator can raise it: GISTNET_LIMITS='{{\"{name}\": ...}}')"
                )


# --------------------------------------------------------------------------- datasets


def source_files(source: str, *, data_store: ArtifactStore, split: str) -> list[str]:
    """The files a split's `source` names, all inside the data root, or a RequestProblem.

    Absolute paths, URLs, `~` and `..` are refused outright, and on a local root so is any
    match that resolves outside it through a symbolic link. On an object store the glob
    runs over the objects under the root's prefix.
    """
    where = f"splits.{split}.source"
    # A URL under the data root's prefix names the same objects as its relative form.
    inside = data_store.key_of(source)
    if "://" in source and inside is None:
        raise RequestProblem(
            f"{where}: {source!r} is outside the server's data root (GISTNET_DATA_ROOT); "
            f"name a file under it, relative to it or as a URL that starts with it"
        )
    source = inside if inside is not None else source
    if os.path.isabs(source) or source.startswith("~") or PurePath(source).drive or "://" in source:
        raise RequestProblem(f"{where}: {source!r} must be relative to the server's data root")
    if ".." in PurePath(source).parts:
        raise RequestProblem(f"{where}: {source!r} leaves the data root ('..' is not allowed)")
    if data_store.is_local:
        root = data_store.local_root
        matches = sorted(Path(p) for p in glob.glob(str(root / source), recursive=True))
        files = [p for p in matches if p.is_file()]
        for path in files:
            if not path.resolve().is_relative_to(root):
                raise RequestProblem(
                    f"{where}: {source!r} reaches {path.name} outside the data root"
                )
        found = [str(p.relative_to(root)) for p in files]
    else:
        try:
            found = data_store.glob(source)
        except StorageError as err:
            raise RequestProblem(f"{where}: {err}", status_code=503) from None
    if not found:
        raise RequestProblem(
            f"{where}: {source!r} matches no file under the server's data root "
            f"(GISTNET_DATA_ROOT); put the corpus there or send the text as `documents`"
        )
    # Preparation reads only these; saying so now beats a failed job later.
    for key in found:
        try:
            source_kind(key)
        except ConfigError as err:
            raise RequestProblem(f"{where}: {err}") from None
    return found


def _check_text_column(key: str, *, data_store: ArtifactStore, split: str, text_column: str):
    """A Parquet source holds the text column (read from its footer). On an object store
    the check waits for the job: reading the footer there means fetching the file."""
    from gistnet.sources import count_documents

    if source_kind(key) != ".parquet" or not data_store.is_local:
        return
    try:
        count_documents(data_store.local_root / key, text_column=text_column)
    except ConfigError as err:
        raise RequestProblem(f"splits.{split}.text_column: {err}") from None


def _teacher_config(name: str):
    """The teacher's Hugging Face config, read without its weights."""
    from gistnet.errors import TeacherLoadError
    from gistnet.teacher import load_teacher_config

    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise RequestProblem(
            f"teacher_model folder {name!r} has no config.json: save the model there with "
            f"save_pretrained()"
        )
    try:
        return load_teacher_config(name)
    except TeacherLoadError as err:
        raise RequestProblem(str(err)) from None


def check_teacher_pair(tokenizer_name: str, teacher_name: str, *, horizon: int | None) -> None:
    """The tokenizer and teacher load (without weights) and belong together, and a horizon
    fits the teacher's context."""
    from gistnet.teacher import load_tokenizer

    try:
        tokenizer = load_tokenizer(tokenizer_name)
    except GistNetError as err:
        raise RequestProblem(f"tokenizer: {err}") from None
    teacher = _teacher_config(teacher_name)
    positions = getattr(teacher, "n_positions", None) or getattr(
        teacher, "max_position_embeddings", None
    )
    if positions is not None and horizon is not None and horizon > positions:
        raise RequestProblem(
            f"horizon ({horizon}) is longer than the teacher's context ({positions} "
            f"positions); lower horizon"
        )
    vocab = getattr(teacher, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RequestProblem(
            f"tokenizer {tokenizer_name!r} has {len(tokenizer)} tokens but teacher "
            f"{teacher_name!r} embeds only {vocab}: they do not belong together"
        )


def import_source(path: str, *, data_store: ArtifactStore) -> dict[str, Any]:
    """Where a dataset to import lies under the data root: {"key", "is_shard", "metadata"}
    (the metadata.yaml beside it as a mapping, or None), or a RequestProblem."""
    import yaml

    inside = data_store.key_of(path)
    if "://" in path and inside is None:
        raise RequestProblem(
            f"path: {path!r} is outside the server's data root (GISTNET_DATA_ROOT)"
        )
    key = (inside if inside is not None else path).strip("/")
    if os.path.isabs(path) or path.startswith("~") or PurePath(key).drive or not key:
        raise RequestProblem(f"path: {path!r} must be relative to the server's data root")
    if ".." in PurePath(key).parts:
        raise RequestProblem(f"path: {path!r} leaves the data root ('..' is not allowed)")
    is_shard = key.endswith(".arrow")
    folder = str(PurePath(key).parent) if is_shard else key
    metadata_key = "metadata.yaml" if folder == "." else f"{folder}/metadata.yaml"
    try:
        if data_store.is_local:
            target = data_store.local_root / key
            if not target.resolve().is_relative_to(data_store.local_root.resolve()):
                raise RequestProblem(f"path: {path!r} reaches outside the data root")
            found = target.is_file() if is_shard else target.is_dir()
        else:
            found = data_store.exists(key if is_shard else metadata_key)
        if not found:
            raise RequestProblem(
                f"path: no {'shard file' if is_shard else 'dataset folder'} {key!r} under the "
                f"server's data root (GISTNET_DATA_ROOT); name a folder with metadata.yaml or "
                f"a .arrow shard"
            )
        metadata = None
        if data_store.exists(metadata_key):
            metadata = yaml.safe_load(data_store.read_text(metadata_key)) or {}
    except StorageError as err:
        raise RequestProblem(f"path: {err}", status_code=503) from None
    except yaml.YAMLError as err:
        raise RequestProblem(f"path: {metadata_key} is not valid YAML: {err}") from None
    if metadata is None and not is_shard:
        raise RequestProblem(
            f"path: {key!r} has no metadata.yaml; name the shard file itself (its block size, "
            f"horizon and width are read from its columns)"
        )
    return {"key": key, "is_shard": is_shard, "metadata": metadata}


def check_import_request(body, *, data_store: ArtifactStore) -> dict[str, Any]:
    """A dataset to import: it is under the data root, and its tokenizer and teacher are
    known (from the request or its metadata) and load. Returns what the job needs."""
    source = import_source(body.path, data_store=data_store)
    metadata = source["metadata"] if isinstance(source["metadata"], dict) else {}
    tokenizer = body.tokenizer or metadata.get("tokenizer")
    teacher = body.teacher_model or metadata.get("teacher_model")
    for key, value in (("tokenizer", tokenizer), ("teacher_model", teacher)):
        if not value:
            raise RequestProblem(
                f"{key}: the dataset at {body.path!r} does not name its {key}; give `{key}` "
                f"(a Hugging Face id or a local folder): training and /gist need it"
            )
    horizon = metadata.get("horizon")
    check_teacher_pair(tokenizer, teacher, horizon=int(horizon) if horizon else None)
    return {"path": source["key"], "tokenizer": tokenizer, "teacher_model": teacher}


def check_dataset_request(config: DatasetConfig, *, data_store: ArtifactStore) -> None:
    """Everything about a dataset request that can be known before running it."""
    for name, split in config.splits.items():
        if split.output_path is not None:
            raise RequestProblem(
                f"splits.{name}.output_path: the service chooses where shards go; remove it"
            )
        if split.source is not None:
            for key in source_files(split.source, data_store=data_store, split=name):
                _check_text_column(
                    key, data_store=data_store, split=name, text_column=split.text_column
                )
        elif not any(doc.strip() for doc in split.documents):
            raise RequestProblem(f"splits.{name}.documents: every document is empty")

    check_teacher_pair(config.tokenizer, config.teacher_model, horizon=config.horizon)


# --------------------------------------------------------------------------- training


def check_run_request(
    run: RunConfig, *, dataset_info: dict[str, Any], split: str, worker_memory: int
) -> None:
    """The run must fit the dataset (its split exists, width and block size match) and a
    worker's memory."""
    from gistnet.train import model_config_for

    splits = dataset_info.get("splits", {})
    if split not in splits:
        raise RequestProblem(
            f"split: the dataset has no split {split!r}; it has {', '.join(sorted(splits))}"
        )
    try:
        model_config = model_config_for(run, dataset_info)
    except ConfigError as err:
        raise RequestProblem(str(err)) from None
    if model_config.teacher_layers and dataset_info.get("teacher_model"):
        from gistnet.teacher import check_teacher_layers

        try:  # the teacher's depth, from its config alone
            check_teacher_layers(
                _teacher_config(dataset_info["teacher_model"]), model_config.teacher_layers
            )
        except ConfigError as err:
            raise RequestProblem(f"model.{err}") from None
    check_run_memory(run, model_config, dataset_info=dataset_info, worker_memory=worker_memory)


def check_run_memory(
    run: RunConfig, model_config, *, dataset_info: dict[str, Any], worker_memory: int
) -> None:
    """Refuse, with the estimate, a run whose model or batch would not fit a worker (one
    training process: a GPU, with `training.processes` over several)."""
    from gistnet.memory import TeacherShape, format_bytes, training_memory

    teacher = None
    if run.training.objective == "substitution":
        try:
            teacher = TeacherShape.from_hf_config(_teacher_config(dataset_info["teacher_model"]))
        except (RequestProblem, KeyError):  # a teacher gone since: the job will say so
            teacher = None
    # Each training process holds the whole model and its part of every batch.
    per_process = -(-run.training.batch_size // run.training.processes)
    estimate = training_memory(
        model_config,
        batch_size=per_process,
        objective=run.training.objective,
        horizon=dataset_info.get("horizon"),
        teacher=teacher,
    )
    if estimate.total > worker_memory:
        raise RequestProblem(
            f"this run needs {estimate.describe()}, more than the {format_bytes(worker_memory)} "
            f"a worker has (GISTNET_WORKER_MEMORY_BYTES): lower training.batch_size "
            f"(now {run.training.batch_size}) or model.num_layers (now {model_config.num_layers})"
        )


# --------------------------------------------------------------------------- gists


def check_gist_request(blocks: list | None, text: str | None, *, max_blocks: int) -> None:
    if (blocks is None) == (text is None):
        raise RequestProblem("give exactly one of `blocks` (token ids) or `text`")
    if blocks is not None and len(blocks) > max_blocks:
        raise RequestProblem(
            f"{len(blocks)} blocks in one request; the most this server takes is {max_blocks} "
            f"(GISTNET_GIST_MAX_BLOCKS): split the request",
            status_code=413,
        )


def check_refine_work(blocks: int, samples: int, steps: int, max_work: int) -> None:
    """A refinement costs about blocks x samples x steps teacher passes: bounded per request."""
    work = blocks * samples * steps
    if work > max_work:
        raise RequestProblem(
            f"refine: {blocks} blocks x {samples} samples x {steps} steps = {work} teacher "
            f"passes; this server refines at most {max_work} per request "
            f"(GISTNET_GIST_REFINE_MAX_WORK): send fewer blocks per request, or ask for fewer "
            f"samples or steps",
            status_code=413,
        )


def gist_text_budget(*, max_blocks: int, block_size: int, longest_token: int) -> tuple[int, int]:
    """(characters, tokens) beyond which a text cannot fit in `max_blocks` blocks.

    No token of the tokenizer spans more than `longest_token` characters, so a text longer
    than (max_blocks + 1) blocks of such tokens is too long for certain, and is refused
    before a single token is made; a shorter one is tokenized no further than one token
    past the last block it may fill.
    """
    tokens = (max_blocks + 1) * block_size
    return tokens * max(longest_token, 1), tokens


def check_gist_text(text: str, *, max_characters: int, max_blocks: int) -> None:
    if len(text) > max_characters:
        raise RequestProblem(
            f"text has {len(text)} characters, more than {max_blocks} blocks can hold "
            f"(GISTNET_GIST_MAX_BLOCKS): send it in parts",
            status_code=413,
        )


def text_blocks(
    ids: list[int], *, block_size: int, max_blocks: int, truncated: bool = False
) -> tuple[np.ndarray, int]:
    """A text's token ids cut into full blocks: ((n, T) ids, tokens left over). `truncated`:
    tokenizing stopped at the budget, so the text has at least that many tokens."""
    full = len(ids) // block_size
    if full == 0:
        raise RequestProblem(f"text: {len(ids)} tokens, fewer than one block of {block_size}")
    if full > max_blocks:
        many = f"more than {max_blocks}" if truncated else str(full)
        raise RequestProblem(
            f"the text makes {many} blocks; the most one request takes is {max_blocks} "
            f"(GISTNET_GIST_MAX_BLOCKS): send it in parts",
            status_code=413,
        )
    blocks = np.asarray(ids[: full * block_size], dtype=np.int64)
    return blocks.reshape(full, block_size), len(ids) - full * block_size  # (n*T,) -> (n, T)


def blocks_array(blocks: list[list[int]], *, block_size: int, vocab_size: int) -> np.ndarray:
    """(N, T) int64 ids; a wrong block names its index and what is wrong with it."""
    if not blocks:
        raise RequestProblem("blocks: give at least one block")
    for index, block in enumerate(blocks):
        if len(block) != block_size:
            raise RequestProblem(
                f"blocks[{index}] has {len(block)} token ids; this model's blocks have exactly "
                f"{block_size}"
            )
    try:
        ids = np.asarray(blocks, dtype=np.int64)
    except OverflowError:
        raise RequestProblem(
            f"blocks: a token id is too large; ids run from 0 to {vocab_size - 1}"
        ) from None
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        index, position = (int(v) for v in np.argwhere(bad)[0])
        raise RequestProblem(
            f"blocks[{index}][{position}] is {int(ids[index, position])}, outside the teacher's "
            f"vocabulary (0 to {vocab_size - 1})"
        )
    return ids
