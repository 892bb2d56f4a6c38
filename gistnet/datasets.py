"""What a dataset is, whatever tool wrote it: its metadata.yaml, its fingerprint, and
the shard files of each split.

Our preparation writes metadata.yaml beside the shards (`gistnet.data`); the seed's tool
wrote a shorter form; a shard may also come alone. `describe_dataset` gives all three the
same keys, and `split_shard_paths` / `open_split` find and open a split's shards from a
dataset folder, a glob or one file.
"""

from __future__ import annotations

import functools
import glob
import hashlib
from pathlib import Path
from typing import Any

import yaml

from gistnet.errors import ConfigError, ShardError
from gistnet.files import file_sha256
from gistnet.shards import ShardSet, missing_shard_error, open_shard, open_shard_set

METADATA_FILE = "metadata.yaml"
# Dtypes our loaders take a teacher in; the seed also wrote "auto" or nothing.
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
_GLOB_CHARS = ("*", "?", "[")


def metadata_path(path: str | Path) -> Path:
    """metadata.yaml for a dataset folder, or for the folder holding a shard."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / METADATA_FILE


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata.yaml beside a shard or in a dataset folder, as written (any form).

    Most callers want `describe_dataset`, which also reads the seed's form and shards
    without metadata, and gives every dataset the same keys.
    """
    meta = metadata_path(path)
    if not meta.is_file():
        raise ShardError(
            f"no {METADATA_FILE} beside {str(path)!r}: the dataset preparation writes it next to "
            f"the shards; prepare the dataset again or copy it along"
        )
    try:
        data = yaml.safe_load(meta.read_text())
    except yaml.YAMLError as err:
        raise ShardError(f"{str(meta)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ShardError(f"{str(meta)!r} must hold a mapping of keys to values")
    return data


def split_path(metadata: dict[str, Any], dataset_dir: str | Path, split: str) -> Path:
    splits = metadata.get("splits", {})
    if split not in splits:
        raise ShardError(f"dataset has no split {split!r}; it has {', '.join(splits) or 'none'}")
    return Path(dataset_dir) / splits[split]["path"]


# --------------------------------------------------------------------------- describing


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    # Keyed by size and mtime too, so a rewritten file is hashed again.
    return bytes.fromhex(file_sha256(path))


def shards_fingerprint(paths: list[Path]) -> str:
    """A dataset fingerprint from its shards' bytes, for datasets whose metadata has none.

    The full content is hashed (at disk speed, about a second per GB when cached):
    sampling a few bytes would miss a re-preparation with another teacher of the same
    width, which changes the states but not the file's size or layout.
    """
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        digest.update(_file_digest(str(path), stat.st_size, stat.st_mtime_ns))
    return digest.hexdigest()[:16]


def resolve_model_ref(name: str, base_dir: str | Path | None = None) -> str:
    """A local folder (named relative to `base_dir`, e.g. the config file's folder, or to
    the working directory) becomes an absolute path, so workers, later runs and a
    checkpoint find it from anywhere; a hub id stays as it is."""
    candidates = [Path(name).expanduser()]
    if base_dir is not None:
        candidates.insert(0, Path(base_dir) / name)
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve())
    return name


def _positive_int(raw: dict[str, Any], key: str, where: Path) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShardError(f"{str(where)!r}: {key} must be a positive whole number; got {value!r}")
    return value


def _seed_splits(raw: dict[str, Any], shard: Path | None) -> dict[str, dict[str, Any]]:
    """The seed's per-split statistics with the shard path it left out.

    The seed wrote shards wherever each split's output_path said, usually
    data/<dataset_name>/<split>.arrow beside the metadata: that name is assumed. A shard
    given by path that is none of those is the dataset's only split, or a split of its own.
    """
    splits = {
        str(name): {**(stats or {}), "path": f"{name}.arrow"}
        for name, stats in (raw.get("splits") or {}).items()
    }
    if shard is not None and shard.name not in {s["path"] for s in splits.values()}:
        if len(splits) == 1:
            next(iter(splits.values()))["path"] = shard.name
        else:
            splits[shard.stem] = {"path": shard.name}
    return splits


def _describe_seed(raw: dict[str, Any], root: Path, shard: Path | None) -> dict[str, Any]:
    meta_file = root / METADATA_FILE
    splits = _seed_splits(raw, shard)
    if not splits:
        raise ShardError(f"{str(meta_file)!r} names no split; give the shard file itself")
    widths = {
        s["teacher_hidden_size"]
        for s in splits.values()
        if isinstance(s.get("teacher_hidden_size"), int) and s["teacher_hidden_size"] > 0
    }
    if len(widths) != 1:  # no teacher recorded, or splits that disagree: the shard says
        first = shard or split_path({"splits": splits}, root, next(iter(splits)))
        widths = {open_shard(first).hidden_size}
    dtype = raw.get("teacher_dtype")
    return {
        "dataset_name": str(raw.get("dataset_name") or root.name),
        "tokenizer": raw.get("tokenizer"),
        "teacher_model": raw.get("teacher_model"),
        # The seed's "auto" chose a dtype on the machine at hand: float32 is always safe.
        "teacher_dtype": dtype if dtype in TEACHER_DTYPES else "float32",
        "block_size": _positive_int(raw, "block_size", meta_file),
        "horizon": _positive_int(raw, "horizon", meta_file),
        "teacher_hidden_size": widths.pop(),
        "splits": splits,
    }


def _describe_shard(shard_path: Path) -> dict[str, Any]:
    shard = open_shard(shard_path)
    return {
        "dataset_name": shard_path.parent.name or shard_path.stem,
        "tokenizer": None,
        "teacher_model": None,
        "teacher_dtype": "float32",  # the states are float32 whatever the teacher ran in
        "block_size": shard.block_size,
        "horizon": shard.horizon,
        "stride": shard.stride,
        "teacher_hidden_size": shard.hidden_size,
        "splits": {shard_path.stem: {"path": shard_path.name, "examples": shard.num_examples}},
    }


def missing_teacher_error(what: str, dataset: str | Path) -> ConfigError:
    """The error for a teacher that is needed but that the dataset does not name."""
    return ConfigError(
        f"{what} runs the teacher, but the dataset at {str(dataset)!r} does not name one (no "
        f"teacher_model in a metadata.yaml beside it): give the teacher its states came from "
        f"with --teacher (teacher_model= in the library), or add teacher_model to metadata.yaml"
    )


def describe_dataset(
    path: str | Path,
    *,
    tokenizer: str | None = None,
    teacher_model: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a dataset is, from a shard file or a dataset folder, in the form our
    preparation writes to metadata.yaml, whichever tool wrote it.

    - Our metadata: returned as written.
    - The seed's (`dataset_name, tokenizer, block_size, horizon, teacher_model,
      teacher_dtype` and per split `documents, blocks, examples, teacher_hidden_size`):
      teacher_hidden_size is lifted from the splits (or read from the shard), each split's
      shard is `<split>.arrow` beside the metadata, and the fingerprint is computed from
      the shards' bytes.
    - No metadata beside a shard: block_size, horizon and teacher_hidden_size come from
      the shard's columns, the fingerprint from its bytes; tokenizer and teacher are
      unknown (None) unless given.

    `metadata`: the folder's metadata.yaml when the caller has read it already.
    `tokenizer` and `teacher_model` supply or override what the metadata names. Split paths
    are relative to the dataset folder (`path`, or the shard's folder). `metadata_form`
    says which case applied: "gistnet", "seed" or "none".
    """
    path = Path(path)
    if path.is_dir():
        root, shard = path, None
    elif path.is_file():
        root, shard = path.parent, path
    else:
        raise missing_shard_error(path)
    if metadata is not None or (root / METADATA_FILE).is_file():
        raw = metadata if metadata is not None else read_metadata(root)
        if "fingerprint" in raw and "teacher_hidden_size" in raw:
            info = {**raw, "metadata_form": "gistnet"}
        else:
            info = {**_describe_seed(raw, root, shard), "metadata_form": "seed"}
    elif shard is not None:
        info = {**_describe_shard(shard), "metadata_form": "none"}
    else:
        raise ShardError(
            f"dataset folder {str(root)!r} has no {METADATA_FILE}: give the shard file itself "
            f"(its block size, horizon and width are read from its columns)"
        )
    if "fingerprint" not in info:
        shards = [root / s["path"] for s in info["splits"].values()]
        info["fingerprint"] = shards_fingerprint([p for p in shards if p.is_file()])
    if tokenizer is not None:
        info["tokenizer"] = resolve_model_ref(tokenizer)
    if teacher_model is not None:
        info["teacher_model"] = resolve_model_ref(teacher_model)
    return info


# --------------------------------------------------------------------------- splits


def split_shard_paths(
    path: str | Path, split: str | None = None, *, default_split: str = "train"
) -> list[Path]:
    """The shard files of a split, from any of: a dataset folder (then `split`, default
    `default_split`, names the split and metadata.yaml lists its shards), a glob of shard
    files (`data/x/train-*.arrow`), or one shard file."""
    text = str(path)
    path = Path(path)
    if path.is_dir():
        metadata = describe_dataset(path)  # our metadata or the seed's
        name = split or default_split
        splits = metadata.get("splits") or {}
        if name not in splits:
            raise ShardError(
                f"dataset {str(path)!r} has no split {name!r}; it has {', '.join(splits) or 'none'}"
            )
        listed = splits[name].get("shards")
        if not listed:
            return split_shard_paths(path / splits[name]["path"])
        files = [path / entry["path"] for entry in listed]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ShardError(
                f"split {name!r} of {str(path)!r} has {len(files) - len(missing)} of its "
                f"{len(files)} shards: {', '.join(missing[:3])} missing; copy the whole folder"
            )
        return files
    if path.is_file():
        return [path]
    if any(c in text for c in _GLOB_CHARS):
        files = sorted(Path(m) for m in glob.glob(text) if Path(m).is_file())
        if not files:
            raise ShardError(f"{text!r} matches no shard file")
        return files
    raise missing_shard_error(path)


def open_split(
    path: str | Path, split: str | None = None, *, default_split: str = "train"
) -> ShardSet:
    """`open_shard_set(split_shard_paths(...))`: a folder, a glob or a file."""
    return open_shard_set(split_shard_paths(path, split, default_split=default_split))


def hf_data_files(path: str | Path) -> dict[str, list[str]]:
    """Each split's shard files, for Hugging Face `datasets`:
    `load_dataset("arrow", data_files=hf_data_files(folder))`.

    The shards are Arrow IPC files whose columns `datasets` reads as they are (fixed-size
    lists become `List(..., length=n)` features), so no export is needed; this only names
    the files, which for a split of several shards metadata.yaml lists.
    """
    splits = describe_dataset(path).get("splits") or {}
    return {name: [str(p) for p in split_shard_paths(path, name)] for name in splits}
