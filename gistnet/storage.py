"""Artifacts on a local disk or in an object store.

A location is a local folder or an fsspec URL (`s3://bucket/prefix` with s3fs; `gs://` and
`az://` work the same once gcsfs / adlfs are installed). `ArtifactStore` names artifacts by
keys relative to its root (`datasets/3/train.arrow`) and offers the three moves the
platform needs:

- `publish(local_path, key)`: a writer works on a local file and publishes it whole. On an
  object store the file goes to a temporary key beside the target and is then copied into
  place, so an object under a final key is always complete: a writer killed mid-upload
  leaves only a `.uploading-*` object, which no reader asks for. On a local root the file
  is copied under a temporary name and renamed, or left alone when it is already there.
- `open_local(key) -> Path`: readers that memory-map (training, evaluation, the gist
  engines) need a local file. A local root gives its own file; an object store's object is
  downloaded into the `LocalCache` (gistnet/cache.py: checked against the object's ETag,
  size and time on every open, bounded in size, safe with many processes).
- `writing(key)`: a local folder to write into before publishing: the final folder on a
  local root (no copy at all), a scratch folder on an object store.

Nothing here knows of the service: it passes its settings in;
the CLIs take theirs from GISTNET_CACHE_DIR, GISTNET_CACHE_MAX_BYTES and
GISTNET_STORAGE_OPTIONS (`store_for`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gistnet.cache import DEFAULT_CACHE_MAX_BYTES, LocalCache
from gistnet.errors import StorageError
from gistnet.files import atomic_write
from gistnet.paths import path_under, relative_key

UPLOADING = ".uploading-"  # infix of the temporary keys a publish writes before the copy


def is_url(location: str | Path) -> bool:
    """An fsspec URL (`s3://...`), as opposed to a local path (`file://` counts as local)."""
    text = str(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme not in ("", "file", "local") and scheme.isidentifier()


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text.partition("://")[2] if text.startswith("file://") else text)


def join(location: str | Path, *parts: str) -> str:
    """A key or URL with parts appended by `/` (URLs keep their scheme's double slash)."""
    base = str(location).rstrip("/")
    tail = "/".join(str(p).strip("/") for p in parts if str(p).strip("/"))
    return f"{base}/{tail}" if tail else base


def _check_key(key: str) -> str:
    # Keys are joined by the store itself (`join("", name)`), hence the outer slashes go.
    return relative_key(str(key).strip("/"))


# --------------------------------------------------------------------------- the store


def _bucket_of(path: str) -> str:
    return path.split("/", 1)[0]


def _describe_access_error(err: Exception, *, root: str, what: str) -> str:
    bucket = root.partition("://")[2].split("/", 1)[0]
    if isinstance(err, FileNotFoundError):
        return (
            f"bucket {bucket!r} of {root} does not exist: create it, or point "
            f"{what} at an existing one"
        )
    if isinstance(err, PermissionError):
        return (
            f"the object store refused the credentials for {root} ({err}): check "
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the key and secret in "
            f"GISTNET_STORAGE_OPTIONS"
        )
    return f"cannot reach {root}: {type(err).__name__}: {err}"


@dataclass
class ArtifactStore:
    """Artifacts under `root` (a folder or an fsspec URL); see the module's docstring."""

    root: str | Path
    storage_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | Path = Path.home() / ".cache" / "gistnet"
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    # How the settings name the root, for error messages (GISTNET_ARTIFACT_ROOT, --output-dir).
    setting: str = "the artifact root"
    # Part size of multipart uploads: larger parts mean fewer requests for big shards.
    part_bytes: int = 50 << 20

    def __post_init__(self) -> None:
        self.is_local = not is_url(self.root)
        if self.is_local:
            self.local_root = local_path(self.root).expanduser().resolve()
            self.root = str(self.local_root)
        else:
            self.root = str(self.root).rstrip("/")
            self._fs = None
            self._root_path: str | None = None
        self.cache = LocalCache(Path(self.cache_dir) / "artifacts", max_bytes=self.cache_max_bytes)

    # ------------------------------------------------------------------ names

    @property
    def fs(self):
        """The fsspec filesystem (object stores only), made on first use."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            try:
                self._fs, self._root_path = url_to_fs(self.root, **self.storage_options)
            except (ImportError, ValueError) as err:
                raise StorageError(f"{self.setting} {self.root}: {err}") from None
        return self._fs

    @property
    def root_path(self) -> str:
        """The root as the filesystem names it (`bucket/prefix`)."""
        self.fs  # noqa: B018 - made together with the filesystem
        return self._root_path

    def _local(self, key: str) -> Path:
        """The file of a key on a local root: never outside it, links followed."""
        return path_under(self.local_root, key)

    def _remote(self, key: str) -> str:
        return join(self.root_path, _check_key(key))

    def key_of(self, location: str) -> str | None:
        """The key of a URL under this (object-store) root, or None when it lies elsewhere."""
        if self.is_local or not is_url(location):
            return None
        prefix = self.root.rstrip("/") + "/"
        return location[len(prefix) :] if location.startswith(prefix) else None

    def location(self, key: str) -> str:
        """Where a key lives: a local path or a URL, for messages and records."""
        return str(self._local(key)) if self.is_local else join(self.root, key)

    # ------------------------------------------------------------------ reading

    def exists(self, key: str) -> bool:
        if self.is_local:
            return self._local(key).exists()
        path = self._remote(key)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def open_local(self, key: str) -> Path:
        """A local file holding the artifact: the file itself on a local root, else a
        cached download checked against the object."""
        if self.is_local:
            path = self._local(key)
            if not path.is_file():
                raise StorageError(f"{path} does not exist")
            return path
        return self.cache.fetch(self.fs, self._remote(key), url=self.location(key))

    def download(self, key: str, destination: str | Path) -> bool:
        """Copy an artifact to a local file (not through the cache); False when absent."""
        destination = Path(destination)
        if self.is_local:
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = self._local(key)
            if not source.is_file():
                return False
            if source.resolve() != destination.resolve():
                shutil.copyfile(source, destination)
            return True
        path = self._remote(key)
        try:
            self.fs.invalidate_cache(path)
            with atomic_write(destination, shared=True) as tmp:
                self.fs.get_file(path, str(tmp))
        except FileNotFoundError:
            return False
        return True

    def read_text(self, key: str) -> str:
        if self.is_local:
            return self._local(key).read_text()
        return self.fs.cat_file(self._remote(key)).decode()

    def glob(self, pattern: str) -> list[str]:
        """Keys of the files matching a relative glob (`corpus/*.jsonl`, `**/*.txt`)."""
        pattern = _check_key(pattern)
        if self.is_local:
            return sorted(
                str(p.relative_to(self.local_root))
                for p in self.local_root.glob(pattern)
                if p.is_file()
            )
        base = self.root_path.rstrip("/") + "/"
        self.fs.invalidate_cache()
        found = self.fs.glob(base + pattern, detail=True)
        return sorted(
            name[len(base) :]
            for name, info in found.items()
            if info.get("type") == "file" and name.startswith(base) and UPLOADING not in name
        )

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A local folder for the files of `key`: the final folder on a local root, a
        scratch folder (removed afterwards) on an object store. Publish what you write."""
        if self.is_local:
            folder = self._local(key)
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
            return
        scratch = Path(self.cache_dir) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="write-", dir=scratch))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, local_file: str | Path, key: str) -> str:
        """Put a finished local file under `key` so that no reader ever sees part of it."""
        local_file = Path(local_file)
        if not local_file.is_file():
            raise StorageError(f"cannot publish {local_file}: no such file")
        if self.is_local:
            target = self._local(key)
            if target.exists() and local_file.resolve() == target.resolve():
                return str(target)
            with atomic_write(target, shared=True) as tmp:
                shutil.copyfile(local_file, tmp)
            return str(target)
        target = self._remote(key)
        parent, _, name = target.rpartition("/")
        temporary = f"{parent}/.{name}{UPLOADING}{uuid.uuid4().hex[:12]}"
        try:
            self.fs.put_file(str(local_file), temporary, chunksize=self.part_bytes)
            # The copy is the publication: the object under `target` appears whole.
            self.fs.copy(temporary, target)
        except Exception as err:
            raise StorageError(
                f"cannot publish {local_file.name} to {self.location(key)}: "
                f"{_describe_access_error(err, root=self.root, what=self.setting)}"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                self.fs.rm_file(temporary)
            self.fs.invalidate_cache(parent)
        return self.location(key)

    def publish_folder(
        self, folder: str | Path, key: str, *, last: Iterable[str] = ("metadata.yaml",)
    ) -> list[str]:
        """Publish every file under `folder` to `key/...`; the names in `last` go last, so
        a reader that finds them finds everything they refer to."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        late = set(last)
        ordered = [p for p in files if p.name not in late] + [p for p in files if p.name in late]
        return [self.publish(p, join(key, str(p.relative_to(folder)))) for p in ordered]

    def delete(self, key: str) -> None:
        if self.is_local:
            self._local(key).unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._remote(key))

    def delete_folder(self, key: str) -> None:
        """Delete `key` and everything under it (nothing if it is not there)."""
        if self.is_local:
            shutil.rmtree(self.local_root / _check_key(key), ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._remote(key), recursive=True)
        self.fs.invalidate_cache(self._remote(key))

    def folders(self, key: str) -> list[str]:
        """The names of the folders directly under `key`."""
        if self.is_local:
            root = self.local_root / _check_key(key)
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        remote = self._remote(key)
        self.fs.invalidate_cache(remote)
        try:
            entries = self.fs.ls(remote, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            entry["name"].rstrip("/").rpartition("/")[2]
            for entry in entries
            if entry.get("type") == "directory"
        )

    # ------------------------------------------------------------------ start-up check

    def check(self, *, write: bool = False) -> None:
        """Raise StorageError saying what is wrong (a missing folder or bucket, refused
        credentials, an unreachable endpoint); with `write`, also try to write."""
        if self.is_local:
            if not self.local_root.is_dir():
                raise StorageError(f"{self.setting} {self.local_root} does not exist")
            if not os.access(self.local_root, os.R_OK | os.X_OK | (os.W_OK if write else 0)):
                raise StorageError(f"{self.setting} {self.local_root} is not accessible")
            return
        fs = self.fs
        bucket = _bucket_of(self.root_path)
        try:
            fs.invalidate_cache()
            fs.ls(bucket, detail=False)
            if write:
                probe = self._remote(f".gistnet-probe-{uuid.uuid4().hex[:12]}")
                fs.pipe_file(probe, b"ok")
                fs.rm_file(probe)
        except Exception as err:
            raise StorageError(
                _describe_access_error(err, root=self.root, what=self.setting)
            ) from None


# --------------------------------------------------------------------------- the CLIs


def settings_from_env() -> dict[str, Any]:
    """Cache and storage options from GISTNET_CACHE_DIR, GISTNET_CACHE_MAX_BYTES and
    GISTNET_STORAGE_OPTIONS (JSON), the variables the service's settings read too."""
    options = os.environ.get("GISTNET_STORAGE_OPTIONS", "").strip()
    try:
        storage_options = json.loads(options) if options else {}
    except json.JSONDecodeError as err:
        raise StorageError(f"GISTNET_STORAGE_OPTIONS is not JSON: {err}") from None
    return {
        "storage_options": storage_options,
        "cache_dir": Path(
            os.environ.get("GISTNET_CACHE_DIR") or Path.home() / ".cache" / "gistnet"
        ),
        "cache_max_bytes": int(
            os.environ.get("GISTNET_CACHE_MAX_BYTES") or DEFAULT_CACHE_MAX_BYTES
        ),
    }


def store_for(location: str | Path, **overrides: Any) -> tuple[ArtifactStore, str]:
    """(a store rooted at the location's folder, the location's name in it)."""
    text = str(location).rstrip("/")
    parent, _, name = text.rpartition("/")
    if is_url(text) and "/" not in text.partition("://")[2]:
        raise StorageError(f"{text} names a bucket; name a file or folder inside it")
    root = parent if parent else "."
    return ArtifactStore(root, **{**settings_from_env(), **overrides}), name


def open_local(location: str | Path) -> Path:
    """A local path as it is; a URL through the cache (settings from the environment)."""
    if not is_url(location):
        return local_path(location)
    store, name = store_for(location)
    return store.open_local(name)


def open_local_dataset(location: str | Path, *, splits: Iterable[str] = ()) -> Path:
    """A shard URL (or a dataset folder URL) made local together with its metadata.yaml
    and the shards of `splits` (e.g. validation), so readers find them side by side.
    Returns the local shard (or folder) path; a local path comes back as it is."""
    if not is_url(location):
        return local_path(location)
    text = str(location).rstrip("/")
    is_shard = text.endswith(".arrow")
    folder = text.rpartition("/")[0] if is_shard else text
    store, _ = store_for(join(folder, "metadata.yaml"))
    import yaml

    try:
        metadata_file = store.open_local("metadata.yaml")
    except StorageError:
        if not is_shard:
            raise
        # A shard of the seed's tool may have no metadata: its columns describe it.
        return store.open_local(text.rpartition("/")[2])
    metadata = yaml.safe_load(metadata_file.read_text()) or {}
    for split in splits:
        entry = metadata.get("splits", {}).get(split)
        if not isinstance(entry, dict):
            continue
        # A split of several shards lists them (its `path` is their glob). The seed's
        # metadata names no paths: its shards are <split>.arrow beside it.
        for shard in entry.get("shards") or [entry]:
            path = shard.get("path") or f"{split}.arrow"
            if "path" in shard or store.exists(path):
                store.open_local(path)
    if is_shard:
        return store.open_local(text.rpartition("/")[2])
    return metadata_file.parent


@contextlib.contextmanager
def writing_to(location: str | Path, *, last: Iterable[str] = ("metadata.yaml",)) -> Iterator[Path]:
    """A local folder whose files are published to `location` when the block succeeds
    (a local location is the folder itself)."""
    if not is_url(location):
        folder = local_path(location)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    text = str(location).rstrip("/")
    store = ArtifactStore(text, **settings_from_env(), setting=text)
    with tempfile.TemporaryDirectory(prefix="gistnet-out-") as scratch:
        yield Path(scratch)
        store.publish_folder(scratch, "", last=last)
