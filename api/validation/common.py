"""What every request is checked for, and the one check of a path under the data root.

Checks raise `RequestProblem`, which the app answers with its status code (422 unless said).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

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


def data_root_key(value: str, *, data_store: ArtifactStore, where: str) -> str:
    """A name a request gives under the data root (a `source`, an import's `path`) as a key
    relative to it: a URL under the root's prefix names the same objects as its relative
    form; an absolute path, another URL, `~` or `..` is refused."""
    inside = data_store.key_of(value)
    if "://" in value and inside is None:
        raise RequestProblem(
            f"{where}: {value!r} is outside the server's data root (GISTNET_DATA_ROOT); "
            f"name a file under it, relative to it or as a URL that starts with it"
        )
    key = inside if inside is not None else value
    if os.path.isabs(key) or key.startswith("~") or PurePath(key).drive or "://" in key:
        raise RequestProblem(f"{where}: {value!r} must be relative to the server's data root")
    if ".." in PurePath(key).parts:
        raise RequestProblem(f"{where}: {value!r} leaves the data root ('..' is not allowed)")
    return key
