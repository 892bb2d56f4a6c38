"""Config files as the client sends them: a dataset config becomes a request and the
files it uploads, a run config a request body. Nothing of the server is imported."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import yaml

from gistnet.errors import GistNetError


def load_dataset_config(path: str | Path) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    """A dataset config file as a request: (config, files to upload by split).

    Relative paths in the file are read from its folder, as the library reads them: a
    tokenizer or teacher folder that exists here is sent as an absolute path (the server
    must see the same file system: the embedded stack, a shared volume); a split whose
    `source` matches files here has them uploaded. A `source` that matches nothing here is
    sent as it is, for the server to find under its data root. `output_path` is dropped:
    the service chooses where shards go.
    """
    path = Path(path)
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise GistNetError(f"{path}: a dataset config must be a mapping of settings")
    base = path.parent
    for key in ("tokenizer", "teacher_model"):
        value = config.get(key)
        if isinstance(value, str) and (base / value).is_dir():
            config[key] = str((base / value).resolve())
    files: dict[str, list[Path]] = {}
    for name, split in (config.get("splits") or {}).items():
        split.pop("output_path", None)
        source = split.get("source")
        if source and not os.path.isabs(source):
            matches = sorted(Path(p) for p in glob.glob(str(base / source), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if matches:
                files[name] = matches
                del split["source"]
    return config, files


def load_run_config(path: str | Path) -> dict[str, Any]:
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise GistNetError(f"{path}: a run config must be a mapping with model / training")
    # A file may name the command line's log cadence; a run sent to the service has none.
    if isinstance(config.get("training"), dict):
        config["training"].pop("log_every", None)
    return config


def content_type(path: str | Path) -> str:
    return "application/jsonl" if str(path).endswith(".jsonl") else "text/plain"
