"""Checks made before anything is queued, each failing with a message a person can act on.

They raise `RequestProblem`, which the app answers with its status code (422 unless said).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from gistnet.config import DatasetConfig, RunConfig
from gistnet.errors import ConfigError, GistNetError, StorageError
from gistnet.sources import source_kind
from gistnet.storage import ArtifactStore


class RequestProblem(Exception):
    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


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


def check_dataset_request(config: DatasetConfig, *, data_store: ArtifactStore) -> None:
    """Everything about a dataset request that can be known before running it."""
    from gistnet.teacher import load_tokenizer

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

    try:
        tokenizer = load_tokenizer(config.tokenizer)
    except GistNetError as err:
        raise RequestProblem(f"tokenizer: {err}") from None
    teacher = _teacher_config(config.teacher_model)
    positions = getattr(teacher, "n_positions", None) or getattr(
        teacher, "max_position_embeddings", None
    )
    if positions is not None and config.horizon > positions:
        raise RequestProblem(
            f"horizon ({config.horizon}) is longer than the teacher's context ({positions} "
            f"positions); lower horizon"
        )
    vocab = getattr(teacher, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RequestProblem(
            f"tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but teacher "
            f"{config.teacher_model!r} embeds only {vocab}: they do not belong together"
        )


# --------------------------------------------------------------------------- training


def check_run_request(run: RunConfig, *, dataset_info: dict[str, Any], split: str) -> None:
    """The run must fit the dataset: its split exists, width and block size match."""
    from gistnet.train import model_config_for

    splits = dataset_info.get("splits", {})
    if split not in splits:
        raise RequestProblem(
            f"split: the dataset has no split {split!r}; it has {', '.join(sorted(splits))}"
        )
    try:
        model_config_for(run, dataset_info)
    except ConfigError as err:
        raise RequestProblem(str(err)) from None


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


def text_blocks(ids: list[int], *, block_size: int, max_blocks: int) -> tuple[np.ndarray, int]:
    """A text's token ids cut into full blocks: ((n, T) ids, tokens left over)."""
    full = len(ids) // block_size
    if full == 0:
        raise RequestProblem(f"text: {len(ids)} tokens, fewer than one block of {block_size}")
    if full > max_blocks:
        raise RequestProblem(
            f"the text makes {full} blocks; the most one request takes is {max_blocks} "
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
