"""POST /datasets with files: a multipart body streamed to the data root.

    curl -F config='{"dataset_name": "notes", "tokenizer": "...", "teacher_model": "..."}' \
         -F train=@a.txt -F train=@b.jsonl -F validation=@held_out.jsonl  .../datasets

The `config` field is the dataset config as JSON (or YAML); every other field is a file
for the split it names. The files go, as they arrive, to
`<data root>/uploads/.incoming-<random>/<split>/`, counted against GISTNET_UPLOAD_MAX_BYTES
(413 past it), and the folder is renamed `uploads/<random>` once the body is whole: a glob
never matches an upload still arriving (`*` skips dot-names), and an API stopped mid-upload
leaves only an `.incoming-` folder, which `sweep_orphaned_uploads` removes once it has
been still for ORPHAN_AGE_S. Each split then reads its folder through `source`, so an
upload gets exactly the checks and the preparation a `source` gets. Before that, the files
are read once as a stream (`check_upload_text`): what they expand to, together, and each
line are held to their bounds (uploads.max_text_bytes, sources.*), so a small compressed
file that would expand past them is a 413 now, not a failed job later. A refused upload
leaves no file behind; a full data root is a 507.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.validation import RequestProblem
from gistnet.bounds import SourceBounds
from gistnet.errors import BoundError, ConfigError
from gistnet.files import is_disk_full
from gistnet.paths import SPLIT_NAME_PATTERN
from gistnet.sources import SOURCE_SUFFIXES, source_kind, text_bytes
from service.settings import Settings

UPLOAD_FOLDER = "uploads"
INCOMING = ".incoming-"  # prefix of an upload's folder while its body still arrives
# An incoming folder nothing has been written to for this long was left by a stopped API.
ORPHAN_AGE_S = 3600.0
# The longest file name most file systems keep, in bytes.
MAX_FILE_NAME_BYTES = 255
# The stored name is shorter: a counter goes before it, and room is left beside it.
STORED_NAME_CHARS = 200
# A config nested deeper than this is not a dataset config; parsing it could recurse past
# Python's stack.
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 1_000_000
# Non-file fields (the config) are read into memory: a config is small.
MAX_FIELD_BYTES = 1024 * 1024
MAX_FILES = 1000
SPLIT_NAME = re.compile(SPLIT_NAME_PATTERN)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@dataclass
class Upload:
    """What arrived: non-file fields as text, files by split (paths under `folder`)."""

    folder: Path
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    bytes: int = 0
    # Every file's split, name and bytes as they arrived: what makes two uploads the same
    # (an Idempotency-Key retry), whatever folder they were written to.
    digest: Any = field(default_factory=hashlib.sha256)


def _safe_name(filename: str, index: int) -> str:
    # The client's name, reduced to characters that are safe in a path and in a glob, and
    # cut (keeping its suffix) to a length every file system takes.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename.replace("\\", "/")).name) or "file"
    if len(name) > STORED_NAME_CHARS:
        suffix = source_kind(name)
        name = name[: STORED_NAME_CHARS - len(suffix)] + suffix
    return f"{index:04d}-{name}"


class _Receiver:
    """python-multipart callbacks that write each file part straight to its file."""

    def __init__(self, upload: Upload, max_bytes: int):
        self.upload, self.max_bytes = upload, max_bytes
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.file: BinaryIO | None = None
        self.value = bytearray()
        self.count = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers, self.name, self.file, self.value = {}, None, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise RequestProblem("a part of the upload has no field name")
        self.name = name
        if b"filename" not in options:
            return
        filename = options[b"filename"].decode("utf-8", "replace")
        if len(options[b"filename"]) > MAX_FILE_NAME_BYTES:
            raise RequestProblem(
                f"{name}: the file name {filename[:40]!r}... is {len(options[b'filename'])} "
                f"bytes long; file names may have at most {MAX_FILE_NAME_BYTES}"
            )
        if not SPLIT_NAME.match(name):
            raise RequestProblem(
                f"file field {name!r}: a file's field names its split (letters, digits, _ or -)"
            )
        if not filename.endswith(SOURCE_SUFFIXES):
            raise RequestProblem(
                f"{name}: cannot read {filename!r}: upload .txt or .html (one document per "
                f"file), .jsonl, .jsonl.gz or .jsonl.zst (one JSON object per line) or "
                f".parquet (one document per row) files"
            )
        self.count += 1
        if self.count > MAX_FILES:
            raise RequestProblem(f"more than {MAX_FILES} files in one upload", status_code=413)
        folder = self.upload.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _safe_name(filename, self.count)
        self.file = path.open("wb")
        self.upload.files.setdefault(name, []).append(path)
        self.upload.digest.update(f"\n{name}\n{filename}\n".encode())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.file is None:
            self.value += chunk
            if len(self.value) > MAX_FIELD_BYTES:
                raise RequestProblem(
                    f"field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes", status_code=413
                )
            return
        self.upload.bytes += len(chunk)
        if self.upload.bytes > self.max_bytes:
            raise RequestProblem(too_large(self.max_bytes), status_code=413)
        self.file.write(chunk)
        self.upload.digest.update(chunk)

    def on_part_end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.name is not None:
            self.upload.fields[self.name] = self.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            file.close()


def too_large(max_bytes: int) -> str:
    return (
        f"the upload is larger than this server takes ({max_bytes} bytes, "
        f"GISTNET_UPLOAD_MAX_BYTES): send fewer or smaller files, or put the corpus under the "
        f"data root and name it as `source`"
    )


def arrival_root(settings: Settings) -> Path:
    """Where uploads arrive: the data root, or for an object-store data root a local
    staging folder, published under the same keys once the request is checked."""
    return (
        settings.data_root
        if isinstance(settings.data_root, Path)
        else (settings.cache_dir / "upload-staging")
    )


def data_root_full() -> RequestProblem:
    return RequestProblem(
        "the server's data root is full: the upload could not be stored; try again once the "
        "operator has freed space, or send fewer or smaller files",
        status_code=507,
    )


def sweep_orphaned_uploads(data_root: Path, *, max_age_s: float = ORPHAN_AGE_S) -> list[Path]:
    """Remove the incoming folders of uploads that stopped arriving (an API killed mid-body)
    more than `max_age_s` ago, judged by the newest write inside; returns those removed."""
    uploads = data_root.resolve() / UPLOAD_FOLDER
    removed = []
    try:
        folders = [p for p in uploads.iterdir() if p.name.startswith(INCOMING) and p.is_dir()]
    except FileNotFoundError:
        return removed
    now = time.time()
    for folder in folders:
        try:
            newest = max(
                [folder.stat().st_mtime]
                + [p.stat().st_mtime for p in folder.rglob("*") if not p.is_symlink()]
            )
        except FileNotFoundError:
            continue  # renamed or removed meanwhile: not an orphan
        if now - newest > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _renamed(upload: Upload, folder: Path) -> None:
    """The whole upload takes its final folder name in one rename."""
    os.rename(upload.folder, folder)
    upload.files = {
        split: [folder / p.relative_to(upload.folder) for p in paths]
        for split, paths in upload.files.items()
    }
    upload.folder = folder


async def receive_upload(request: Request, *, data_root: Path, max_bytes: int) -> Upload:
    """Stream the multipart body into a fresh folder under the data root, under a temporary
    name until it is whole. On any problem the folder is removed and the problem raised."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise RequestProblem(too_large(max_bytes), status_code=413)  # before reading a byte
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestProblem("multipart/form-data without a boundary: let the client set it")
    sweep_orphaned_uploads(data_root)
    name = uuid.uuid4().hex
    uploads = data_root.resolve() / UPLOAD_FOLDER
    upload = Upload(folder=uploads / f"{INCOMING}{name}")
    try:
        upload.folder.mkdir(parents=True)
    except OSError as err:
        if is_disk_full(err):
            raise data_root_full() from None
        raise
    receiver = _Receiver(upload, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
            receiver.close()
            _renamed(upload, uploads / name)
        except MultipartParseError as err:
            raise RequestProblem(f"the multipart/form-data body is malformed: {err}") from None
        except OSError as err:
            if is_disk_full(err):
                raise data_root_full() from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk fails the close too
            receiver.close()
        shutil.rmtree(upload.folder, ignore_errors=True)
        raise
    return upload


def dataset_config_of(upload: Upload, *, data_root: Path) -> dict[str, Any]:
    """The dataset request the upload stands for: its config, each uploaded split read
    through `source` from its folder."""
    text = upload.fields.get("config")
    if text is None:
        raise RequestProblem(
            "missing field 'config': the dataset config as JSON (dataset_name, tokenizer, "
            "teacher_model, ...); the files' field names give the splits"
        )
    try:
        try:
            config = json.loads(text)
        except json.JSONDecodeError:
            try:
                config = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise RequestProblem(f"config: neither JSON nor YAML ({err})") from None
    except RecursionError:
        raise RequestProblem(_too_deep()) from None
    _check_config_shape(config)
    if not isinstance(config, dict):
        raise RequestProblem("config: must be an object of dataset settings")
    unknown = set(upload.fields) - {"config"}
    if unknown:
        raise RequestProblem(
            f"unknown field(s) {sorted(unknown)}: send `config` and files (a file's field "
            f"names its split)"
        )
    if not upload.files:
        raise RequestProblem(
            "no files: attach .txt, .jsonl(.gz|.zst) or .parquet files, one field per split"
        )
    splits = dict(config.get("splits") or {})
    relative = upload.folder.relative_to(data_root.resolve())
    for split, paths in upload.files.items():
        given = dict(splits.get(split) or {})
        if given.get("source") is not None or given.get("documents") is not None:
            raise RequestProblem(
                f"splits.{split}: files were uploaded for it, so give it no source or documents"
            )
        if not any(p.stat().st_size for p in paths):
            raise RequestProblem(f"{split}: every uploaded file is empty")
        splits[split] = {**given, "source": f"{relative.as_posix()}/{split}/*"}
    return {**config, "splits": splits}


def check_upload_text(
    upload: Upload, text_columns: dict[str, str], *, bounds: SourceBounds, max_text_bytes: int
) -> None:
    """Every uploaded file read once as a stream, decompressed: each within the source
    bounds, all together within `max_text_bytes` (uploads.max_text_bytes); past one, a 413
    naming it, before any byte more is read. `text_columns`: each split's text_column."""
    total = 0
    for split, paths in upload.files.items():
        for path in paths:
            try:
                total += text_bytes(
                    path,
                    text_column=text_columns.get(split, "text"),
                    bounds=bounds,
                    at_most=max_text_bytes - total,
                )
            except BoundError as err:
                raise RequestProblem(f"{split}: {err}", status_code=413) from None
            except ConfigError as err:
                raise RequestProblem(f"{split}: {err}") from None
            if total > max_text_bytes:
                raise RequestProblem(
                    f"the uploaded files hold more than {max_text_bytes} bytes of text once "
                    f"decompressed (uploads.max_text_bytes): send fewer or smaller files, or put "
                    f"the corpus under the data root and name it as `source`; the operator can "
                    f"raise the bound: GISTNET_LIMITS='{{\"uploads.max_text_bytes\": ...}}'",
                    status_code=413,
                )


def _too_deep() -> str:
    return f"config: nested more than {MAX_CONFIG_DEPTH} levels deep; a dataset config is flat"


def _check_config_shape(config: Any) -> None:
    """Refuse a config nested past MAX_CONFIG_DEPTH or holding more than MAX_CONFIG_NODES
    values, walked without recursion: YAML aliases can make a value that holds itself, or
    one whose copies multiply, which everything after the parse would recurse through."""
    stack, seen = [(config, 1)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if depth > MAX_CONFIG_DEPTH:
            raise RequestProblem(_too_deep())
        if seen > MAX_CONFIG_NODES:
            raise RequestProblem(
                f"config: more than {MAX_CONFIG_NODES} values; a dataset config is small "
                f"(send large corpora as files)"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def parse_model(model_class, data: dict[str, Any]):
    """A pydantic model from a dict, its errors answered as a JSON body's would be (422)."""
    try:
        return model_class.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors()]
        ) from None
