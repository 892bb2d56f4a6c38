"""Local files written safely: whole or not at all (`atomic_write`), a full disk named
(`disk_full_named`), one file's digest, an exclusive lock between processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gistnet.errors import DiskFullError

# --------------------------------------------------------------------------- a full disk

# A torch.save that failed on a filesystem with less than this left ran out of room.
NEARLY_FULL_BYTES = 64 << 20


def is_disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `err`, raised while writing into `folder`, means its disk is full: an OSError
    ENOSPC or EDQUOT, or torch.save's writer failing (a RuntimeError from its C++ stream,
    `[enforce fail at inline_container.cc...]`, which names no cause) where next to nothing
    is left."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, RuntimeError) and folder is not None and "inline_container" in str(err):
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


@contextlib.contextmanager
def disk_full_named(
    folder: str | Path, *, what: str, partial: Path | None = None
) -> Iterator[None]:
    """Write into `folder` in the block; a full disk raises DiskFullError saying so and what
    was being written. `partial`, a file the block writes before renaming it, is removed on
    any failure: on a full disk it holds the space that is missing."""
    try:
        yield
    except BaseException as err:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        if not is_disk_full(err, folder):
            raise
        raise DiskFullError(
            f"the disk holding {folder} is full: {what} could not be written; free some space "
            f"(or give it a larger disk) and run it again"
        ) from err


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_write(
    path: str | Path, *, what: str | None = None, shared: bool = False
) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write (a file or a folder). When the
    block succeeds the temporary is flushed to disk and renamed to `path`, so a reader
    finds the whole of it or nothing; when it fails the temporary is removed.

    A folder replaces an earlier folder of the same name (see `_replace`).

    `shared`: other processes may write `path` at the same moment, so each gets a temporary
    of its own (hidden, so a folder's publish skips it); otherwise the one `<name>.tmp`,
    which a rerun replaces (what a killed writer left there is removed first) and the
    cleanups know. `what` names what is written, so that a full disk raises DiskFullError
    saying so (see `disk_full_named`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    else:
        tmp = path.with_name(f"{path.name}.tmp")
        _remove(tmp)  # a file would be overwritten, but a folder's mkdir would fail
    named = disk_full_named(path.parent, what=what) if what else contextlib.nullcontext()
    with named:
        try:
            yield tmp
            _sync_written(tmp)
            _replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
        _sync(path.parent)


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`. A rename cannot replace a folder that holds files, so an
    earlier folder is first renamed aside (hidden) and removed after: a reader finds the
    old folder whole, the new one whole, or for that instant none, never a mix of both."""
    if not (tmp.is_dir() and path.is_dir() and not path.is_symlink()):
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _sync(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_written(path: Path) -> None:
    """Flush what the block wrote before a rename names it: a file, or a folder with
    everything in it."""
    inner = [p for p in path.rglob("*") if not p.is_symlink()] if path.is_dir() else []
    for each in (*inner, path):
        _sync(each)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB reads."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` held for the block; yields False when non-blocking and
    taken by someone else. Lock files are never removed: a process waiting on a removed
    file would lock a different inode than the next comer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    with atomic_write(path, shared=True) as tmp:
        tmp.write_text(json.dumps(value))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
