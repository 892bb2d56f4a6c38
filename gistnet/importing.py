"""A dataset another tool wrote (the seed's `prepare_dataset`, or this platform elsewhere),
brought into an output folder: its shards copied and checked by reading them, and a
metadata.yaml in this platform's form written last.

The import reads only files of the dataset's own folder. Every name its metadata.yaml
gives (a split's `path`, each listed shard) must be a relative name there, and a file that
is a symbolic link must lead to a file of that folder too: otherwise the import stops
before opening anything, with a message that names what the metadata says, never where a
link leads. metadata.yaml is read once (`inspect_import`) and handed on.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gistnet.datasets import METADATA_FILE, describe_dataset
from gistnet.errors import Cancelled, ShardError
from gistnet.files import atomic_write
from gistnet.paths import PathOutsideRoot, check_split_name, path_under, relative_key
from gistnet.shards import open_shard_set
from gistnet.storage import ArtifactStore

_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class ImportSource:
    """What an import will read, under a store: the dataset's folder, the shard a request
    named (or None for a folder), the parsed metadata.yaml (None when there is none) and
    the names of every file to read, relative to the folder."""

    folder: str
    shard: str | None
    metadata: dict[str, Any] | None
    files: tuple[str, ...]

    @property
    def key(self) -> str:
        """The folder, or the shard, as a key of the store."""
        return "/".join(part for part in (self.folder, self.shard) if part)


def _name_in_folder(value: Any, where: str) -> str:
    try:
        return relative_key(value) if isinstance(value, str) else relative_key("")
    except PathOutsideRoot:
        raise ShardError(
            f"{METADATA_FILE}: {where} is {value!r}; an import reads only files of the "
            f"dataset's own folder, named relative to it"
        ) from None


def files_to_read(metadata: dict[str, Any] | None, *, shard: str | None) -> list[str]:
    """The names (relative to the dataset's folder) an import of this metadata reads, each
    checked to be a plain relative name; split names follow the split-name rule."""
    names = [shard] if shard else []
    if shard and metadata is None:  # the shard alone is a split named by its file
        try:
            check_split_name(Path(shard).stem)
        except ValueError as err:
            raise ShardError(f"{shard!r} names its split by its file name: {err}") from None
    splits = (metadata or {}).get("splits") or {}
    if not isinstance(splits, dict):
        raise ShardError(f"{METADATA_FILE}: `splits` must map split names to their shards")
    for split, entry in splits.items():
        try:
            check_split_name(split)
        except ValueError as err:
            raise ShardError(f"{METADATA_FILE}: splits: {err}") from None
        entry = entry if isinstance(entry, dict) else {}
        listed = [s for s in entry.get("shards") or [] if isinstance(s, dict)]
        for index, item in enumerate(listed):
            names.append(_name_in_folder(item.get("path"), f"splits.{split}.shards[{index}].path"))
        if "path" in entry:
            path = _name_in_folder(entry["path"], f"splits.{split}.path")
            if not listed and not any(c in path for c in _GLOB_CHARS):
                names.append(path)
        elif not listed:  # the seed's metadata names no paths: <split>.arrow beside it
            names.append(f"{split}.arrow")
    return list(dict.fromkeys(names))


def inspect_import(store: ArtifactStore, key: str) -> ImportSource:
    """The dataset at `key` (a folder with metadata.yaml, or one .arrow shard) of a store,
    its metadata read once and every name it gives checked. On a local store, links too."""
    is_shard = key.endswith(".arrow")
    folder, _, name = key.rpartition("/") if is_shard else (key, "", "")
    metadata_key = f"{folder}/{METADATA_FILE}" if folder else METADATA_FILE
    metadata = None
    if store.exists(metadata_key):
        try:
            metadata = yaml.safe_load(store.read_text(metadata_key)) or {}
        except yaml.YAMLError as err:
            raise ShardError(f"{metadata_key} is not valid YAML: {err}") from None
        if not isinstance(metadata, dict):
            raise ShardError(f"{metadata_key} must hold a mapping of keys to values")
    files = files_to_read(metadata, shard=name or None)
    if store.is_local:
        base = store.local_root / folder if folder else store.local_root
        for file in files:
            try:
                path_under(base, file)
            except PathOutsideRoot:
                raise ShardError(
                    f"{file!r} is a symbolic link that leads outside the dataset's folder; "
                    f"an import reads only files of that folder: copy the file there"
                ) from None
    return ImportSource(folder=folder, shard=name or None, metadata=metadata, files=tuple(files))


@contextmanager
def local_import_folder(store: ArtifactStore, source: ImportSource) -> Iterator[Path]:
    """The dataset's folder on this machine: itself on a local store, else a scratch
    folder holding exactly the files the import reads (and metadata.yaml)."""
    if store.is_local:
        yield store.local_root / source.folder if source.folder else store.local_root
        return
    prefix = f"{source.folder}/" if source.folder else ""
    with tempfile.TemporaryDirectory(prefix="gistnet-import-") as staging:
        names = list(source.files) + ([METADATA_FILE] if source.metadata is not None else [])
        for name in names:
            store.download(f"{prefix}{name}", Path(staging) / name)
        yield Path(staging)


def import_dataset(
    source: ImportSource,
    *,
    folder: Path,
    output_dir: Path,
    dataset_name: str,
    tokenizer: str,
    teacher_model: str,
    imported_from: str,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Copy the dataset in `folder` (see `local_import_folder`) to `output_dir`: each
    split's shard as `<split>.arrow` (a split of several shards keeps their names, so its
    glob stays valid), each opened first (columns and every row's length), then
    metadata.yaml. Returns the metadata written. Token-only shards import alike."""
    report = on_progress or (lambda _: None)
    report({"stage": "describing", "path": imported_from})
    described = folder / source.shard if source.shard else folder
    info = describe_dataset(
        described, tokenizer=tokenizer, teacher_model=teacher_model, metadata=source.metadata
    )
    splits = {}
    for name, stats in info["splits"].items():
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"import of {imported_from!r} cancelled")
        listed = stats.get("shards")
        files = [path_under(folder, entry["path"]) for entry in listed or [stats]]
        examples = open_shard_set(files).num_examples
        if listed:
            for file in files:
                _copy_whole(file, path_under(output_dir, file.name))
            path = stats["path"]
        else:
            try:
                path = f"{check_split_name(name)}.arrow"
            except ValueError as err:
                raise ShardError(f"{imported_from!r}: {err}") from None
            _copy_whole(files[0], path_under(output_dir, path))
        splits[name] = {
            **stats,
            "path": path,
            "examples": examples,
            "bytes": sum(file.stat().st_size for file in files),
        }
        report({"stage": "copied", "split": name, "examples": examples})
    info = {
        **{k: v for k, v in info.items() if k != "metadata_form"},
        "dataset_name": dataset_name,
        "splits": splits,
        "imported_from": {"path": imported_from, "metadata_form": info.get("metadata_form")},
    }
    with atomic_write(path_under(output_dir, METADATA_FILE)) as tmp:
        tmp.write_text(yaml.safe_dump(info, sort_keys=False))
    return info


def _copy_whole(source: Path, target: Path) -> None:
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)
