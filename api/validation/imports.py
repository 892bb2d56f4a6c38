"""POST /datasets/import: the dataset lies under the data root, every file its metadata
names lies in its own folder, and its tokenizer and teacher are allowed and load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.validation.common import RequestProblem, data_root_key
from api.validation.models import check_teacher_pair
from gistnet.errors import ShardError, StorageError
from gistnet.importing import ImportSource, inspect_import
from gistnet.paths import PathOutsideRoot, path_under
from gistnet.storage import ArtifactStore


def import_source(path: str, *, data_store: ArtifactStore) -> ImportSource:
    """Where a dataset to import lies under the data root, its metadata read and every
    name in it checked, or a RequestProblem."""
    key = data_root_key(path, data_store=data_store, where="path").strip("/")
    if not key:
        raise RequestProblem(f"path: {path!r} must be relative to the server's data root")
    is_shard = key.endswith(".arrow")
    try:
        if data_store.is_local:
            try:
                target = path_under(data_store.local_root, key)
            except PathOutsideRoot:
                raise RequestProblem(f"path: {path!r} reaches outside the data root") from None
            found = target.is_file() if is_shard else target.is_dir()
        else:
            found = data_store.exists(key if is_shard else f"{key}/metadata.yaml")
        if not found:
            raise RequestProblem(
                f"path: no {'shard file' if is_shard else 'dataset folder'} {key!r} under the "
                f"server's data root (GISTNET_DATA_ROOT); name a folder with metadata.yaml or "
                f"a .arrow shard"
            )
        source = inspect_import(data_store, key)
    except StorageError as err:
        raise RequestProblem(f"path: {err}", status_code=503) from None
    except ShardError as err:
        raise RequestProblem(f"path: {err}") from None
    if source.metadata is None and not is_shard:
        raise RequestProblem(
            f"path: {key!r} has no metadata.yaml; name the shard file itself (its block size, "
            f"horizon and width are read from its columns)"
        )
    return source


def check_import_request(
    body, *, data_store: ArtifactStore, model_roots: Sequence[Path] | None = None
) -> dict[str, Any]:
    """A dataset to import: it is under the data root, and its tokenizer and teacher are
    known (from the request or its metadata) and load. Returns what the job needs."""
    source = import_source(body.path, data_store=data_store)
    metadata = source.metadata or {}
    tokenizer = body.tokenizer or metadata.get("tokenizer")
    teacher = body.teacher_model or metadata.get("teacher_model")
    for key, value in (("tokenizer", tokenizer), ("teacher_model", teacher)):
        if not value:
            raise RequestProblem(
                f"{key}: the dataset at {body.path!r} does not name its {key}; give `{key}` "
                f"(a Hugging Face id or a local folder): training and /gist need it"
            )
    horizon = metadata.get("horizon")
    check_teacher_pair(
        tokenizer, teacher, horizon=int(horizon) if horizon else None, model_roots=model_roots
    )
    return {"path": source.key, "tokenizer": tokenizer, "teacher_model": teacher}
