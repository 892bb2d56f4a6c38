"""The local cache of an object store's files: readers that memory-map need a local file.

Downloaded objects are checked against the object's ETag, size and time on every open,
bounded in size (least recently used evicted) and safe with many processes filling one
entry at once. The cache mirrors the store's layout
(`<cache>/objects/s3/bucket/datasets/3/train.arrow`), so the files of one dataset lie in
one local folder and `metadata.yaml` is found beside its shards as on a local disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gistnet.errors import StorageError
from gistnet.files import atomic_write, file_lock, read_json, write_json_atomic

DEFAULT_CACHE_MAX_BYTES = 20 << 30


def object_identity(info: dict[str, Any]) -> str:
    """What changes when an object is replaced: its ETag (or checksum), size and time."""
    tag = next(
        (info[k] for k in ("ETag", "etag", "md5Hash", "content_md5", "checksum") if info.get(k)),
        "",
    )
    when = next(
        (info[k] for k in ("LastModified", "last_modified", "updated", "mtime") if info.get(k)),
        "",
    )
    return f"{str(tag).strip(chr(34))}|{int(info.get('size') or 0)}|{when}"


@dataclass
class CacheEntry:
    url: str
    path: Path
    size: int
    last_used: float


class LocalCache:
    """Downloaded objects under `root`, at most `max_bytes` in all.

    Layout: `objects/<protocol>/<bucket>/<key>` holds the data, `meta/<same>.json` its
    URL, identity and size (its mtime is the last use), `locks/<hash>.lock` serialises the
    processes that fill one entry. A fill downloads to a temporary file and renames it, so
    a reader never opens half a file; a process that has a file memory-mapped keeps its
    pages when the entry is evicted or replaced (the inode lives until it lets go).
    """

    def __init__(self, root: str | Path, *, max_bytes: int = DEFAULT_CACHE_MAX_BYTES):
        self.root = Path(root).expanduser().resolve()
        self.max_bytes = int(max_bytes)

    def _paths(self, url: str) -> tuple[Path, Path, Path]:
        protocol, _, rest = url.partition("://")
        relative = PurePosixPath(protocol, *[p for p in rest.split("/") if p not in ("", ".")])
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        return (
            self.root / "objects" / relative,
            self.root / "meta" / f"{relative}.json",
            self.root / "locks" / f"{digest}.lock",
        )

    def fetch(self, fs, remote_path: str, *, url: str) -> Path:
        """The object as a local file, downloaded unless the cached copy is the same object."""
        try:
            fs.invalidate_cache(remote_path)
            info = fs.info(remote_path)
        except FileNotFoundError:
            raise StorageError(
                f"{url} does not exist (it was never published, or was removed)"
            ) from None
        except Exception as err:
            raise StorageError(f"cannot read {url}: {type(err).__name__}: {err}") from None
        if info.get("type") not in (None, "file"):
            raise StorageError(f"{url} is a folder, not a file")
        identity = object_identity(info)
        data, meta, lock = self._paths(url)
        with file_lock(lock):
            known = read_json(meta)
            if (
                known is not None
                and known.get("identity") == identity
                and data.is_file()
                and data.stat().st_size == int(info.get("size") or 0)
            ):
                os.utime(meta)  # the entry's last use, for LRU eviction
                return data
            try:
                with atomic_write(data, shared=True) as part:
                    fs.get_file(remote_path, str(part))
                    size = part.stat().st_size
                    if size != int(info.get("size") or 0):
                        raise StorageError(
                            f"{url}: downloaded {size} bytes but the object has "
                            f"{info.get('size')}; it changed while being read, try again"
                        )
            except StorageError:
                raise
            except Exception as err:
                raise StorageError(f"cannot download {url}: {type(err).__name__}: {err}") from None
            write_json_atomic(meta, {"url": url, "identity": identity, "size": size})
        self.evict(keep=meta)
        return data

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        out = []
        for meta in (self.root / "meta").rglob("*.json"):
            record = read_json(meta)
            if record is None:
                continue
            data, _, _ = self._paths(record["url"])
            try:
                used = meta.stat().st_mtime
                size = data.stat().st_size
            except FileNotFoundError:
                continue
            out.append(CacheEntry(url=record["url"], path=data, size=size, last_used=used))
        return sorted(out, key=lambda e: e.last_used)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def evict(self, *, keep: Path | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits; returns their URLs.

        An entry being filled right now (its lock is held) is skipped, and so is `keep`
        (the entry just fetched, even when it alone is larger than the bound)."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted: list[str] = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            data, meta, lock = self._paths(entry.url)
            if keep is not None and meta == keep:
                continue
            with file_lock(lock, blocking=False) as got:
                if not got:
                    continue
                meta.unlink(missing_ok=True)
                data.unlink(missing_ok=True)
            total -= entry.size
            evicted.append(entry.url)
        return evicted
