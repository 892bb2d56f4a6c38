"""POST /datasets: each split's `source` under the data root (out of the uploads area), its
files readable, and the tokenizer and teacher allowed and belonging together."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from api.uploads import UPLOAD_FOLDER
from api.validation.common import RequestProblem, data_root_key
from api.validation.models import check_teacher_pair
from gistnet.bounds import SourceBounds
from gistnet.config import DatasetConfig
from gistnet.errors import BoundError, ConfigError, StorageError
from gistnet.paths import is_under
from gistnet.sources import (
    count_documents,
    document_too_long,
    file_too_large,
    glob_files,
    source_kind,
)
from gistnet.storage import ArtifactStore


def _may_reach_uploads(key: str) -> bool:
    """Whether a glob could match files under uploads/, now or once more arrive there."""
    parts = PurePosixPath(key).parts
    reaches_below = len(parts) > 1 or "**" in parts[0]
    return reaches_below and fnmatchcase(UPLOAD_FOLDER, parts[0])


def source_files(
    source: str, *, data_store: ArtifactStore, split: str, own_upload: str | None = None
) -> list[str]:
    """The files a split's `source` names, all inside the data root, or a RequestProblem.

    Absolute paths, URLs, `~` and `..` are refused outright, and on a local root so is any
    match that resolves outside it through a symbolic link; a file reached twice (a link
    loop) counts once. The uploads area holds other requests' files, some half written:
    only the request's own upload (`own_upload`, the multipart form) may be read there. On
    an object store the glob runs over the objects under the root's prefix.
    """
    where = f"splits.{split}.source"
    key = data_root_key(source, data_store=data_store, where=where)
    mine = own_upload is not None and key.startswith(own_upload.rstrip("/") + "/")
    uploads_refused = RequestProblem(
        f"{where}: {source!r} could read {UPLOAD_FOLDER}/, which holds other requests' "
        f"uploads; send the files in the request, or name a folder other than {UPLOAD_FOLDER}"
    )
    if not mine and _may_reach_uploads(key):
        raise uploads_refused
    if data_store.is_local:
        root = data_store.local_root
        files = glob_files(str(root / key))
        for path in files:
            if not is_under(path, root):
                raise RequestProblem(f"{where}: {source!r} reaches {path.name} outside the data root")
            if not mine and is_under(path, root / UPLOAD_FOLDER):
                raise uploads_refused
        found = [str(p.relative_to(root)) for p in files]
    else:
        try:
            found = data_store.glob(key)
        except StorageError as err:
            raise RequestProblem(f"{where}: {err}", status_code=503) from None
    if not mine and any(k.startswith(f"{UPLOAD_FOLDER}/") for k in found):
        raise uploads_refused
    if not found:
        raise RequestProblem(
            f"{where}: {source!r} matches no file under the server's data root "
            f"(GISTNET_DATA_ROOT); put the corpus there or send the text as `documents`"
        )
    # Preparation reads only these; saying so now beats a failed job later.
    for found_key in found:
        try:
            source_kind(found_key)
        except ConfigError as err:
            raise RequestProblem(f"{where}: {err}") from None
    return found


def _check_file(
    key: str, *, data_store: ArtifactStore, split: str, text_column: str, bounds: SourceBounds
) -> None:
    """What a local source file shows without being read: a Parquet file's text column
    and its text's size (its footer), an uncompressed file's size against the bounds. A
    compressed file's text is counted by the job as it streams; on an object store the
    checks wait for the job too (reading a footer there means fetching the file)."""
    if not data_store.is_local:
        return
    path = data_store.local_root / key
    kind = source_kind(key)
    try:
        if kind == ".parquet":
            count_documents(path, text_column=text_column, bounds=bounds)
        elif kind in (".txt", ".jsonl"):
            size = path.stat().st_size
            if size > bounds.max_file_bytes:
                raise file_too_large(path, bounds)
            if kind == ".txt" and size > bounds.max_document_bytes:
                raise document_too_long(path.name, bounds)
    except BoundError as err:
        raise RequestProblem(f"splits.{split}.source: {err}") from None
    except ConfigError as err:
        raise RequestProblem(f"splits.{split}.text_column: {err}") from None


def check_dataset_request(
    config: DatasetConfig,
    *,
    data_store: ArtifactStore,
    model_roots: Sequence[Path] | None = None,
    own_upload: str | None = None,
    source_bounds: SourceBounds | None = None,
) -> None:
    """Everything about a dataset request that can be known before running it.
    `source_bounds`: the server's (by default the defaults with GISTNET_LIMITS)."""
    bounds = source_bounds or SourceBounds.from_environment()
    for name, split in config.splits.items():
        if split.output_path is not None:
            raise RequestProblem(
                f"splits.{name}.output_path: the service chooses where shards go; remove it"
            )
        if split.source is not None:
            keys = source_files(
                split.source, data_store=data_store, split=name, own_upload=own_upload
            )
            for key in keys:
                _check_file(
                    key,
                    data_store=data_store,
                    split=name,
                    text_column=split.text_column,
                    bounds=bounds,
                )
        elif not any(doc.strip() for doc in split.documents):
            raise RequestProblem(f"splits.{name}.documents: every document is empty")

    check_teacher_pair(
        config.tokenizer, config.teacher_model, horizon=config.horizon, model_roots=model_roots
    )
