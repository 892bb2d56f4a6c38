"""The one way a file name that came from a request becomes a path: it stays under its root.

A split's name becomes a shard's file name, an import's metadata names the files it reads,
a job's id names its folder. Each caller checks what it can, but the builder here refuses
on its own whatever the caller did: a key that is absolute, has `..` or a NUL, or (on a
local root) reaches outside through a symbolic link raises `PathOutsideRoot`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from gistnet.errors import StorageError

# Split names are file names (`<split>.arrow`) and column values: letters, digits, _ and -.
SPLIT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_SPLIT_NAME = re.compile(SPLIT_NAME_PATTERN)
SPLIT_NAME_RULE = "1 to 64 letters, digits, _ or - (a split's name is its shard's file name)"


class PathOutsideRoot(StorageError):
    """A path built from a name would lie outside its root; nothing is read or written."""


def check_split_name(name: object) -> str:
    """The name itself, or ValueError saying the rule (pydantic turns it into a 422)."""
    if not isinstance(name, str) or not _SPLIT_NAME.match(name):
        raise ValueError(f"split name {name!r} is not allowed: use {SPLIT_NAME_RULE}")
    return name


def relative_key(key: str | PurePosixPath) -> str:
    """`key` as a clean relative key (`a/b/c`), or PathOutsideRoot. A leading `/` is
    refused, not stripped: an absolute name never meant a place under the root."""
    text = str(key)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if (
        not parts
        or text.startswith(("/", "~"))
        or "\\" in text
        or "\x00" in text
        or ".." in parts
        or "://" in text
    ):
        raise PathOutsideRoot(f"{text!r} is not a relative name under its folder")
    return "/".join(parts)


def path_under(root: str | Path, *parts: str) -> Path:
    """`root / parts...` when it stays under `root` once every symbolic link on the way
    is followed; else PathOutsideRoot (which names the parts, never where a link leads)."""
    base = Path(root).resolve()
    key = relative_key("/".join(str(p) for p in parts))
    path = base / key
    if not path.resolve().is_relative_to(base):
        raise PathOutsideRoot(f"{key!r} leads outside its folder through a symbolic link")
    return path


def is_under(path: str | Path, root: str | Path) -> bool:
    """Whether `path`, every link followed, lies under `root` (itself resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())
