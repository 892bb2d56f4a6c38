"""Dataset preparation: text -> token blocks -> (teacher states) -> Arrow shards.

The work streams: documents are read (`gistnet.sources`), and each part's shard is
written by `gistnet.examples` (tokenized a chunk at a time, the teacher run in batches,
a record batch written per batch, the shard renamed only when complete), so peak memory
depends on the batch, not on the corpus.

With `teacher_states: none` no teacher runs: the shards hold the token columns alone
(`gistnet.shards.token_schema`, a few hundred bytes an example whatever the teacher's
width) and training runs the teacher inside its steps.

A split is written as `shards: N` files (one by default), each from a contiguous range of
the split's documents, in three steps that different machines may run:

    plan_dataset      the fingerprint, the documents of every source file, each part's range
    prepare_part      one part's shard, and its manifest (rows, bytes, sha256) under .parts/
    finalize_dataset  checks every part against its manifest, then writes metadata.yaml

`prepare_dataset` runs the three in one process, whatever the number of shards; the
service runs each part of a split of several shards as a task.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from gistnet.bounds import SourceBounds
from gistnet.config import DatasetConfig, SplitConfig
from gistnet.datasets import METADATA_FILE, resolve_model_ref
from gistnet.errors import ConfigError, ShardError
from gistnet.examples import (
    PrepResources,
    examples_of,
    load_prep_resources,
    no_examples,
    shard_schema_of,
    write_shard,
)
from gistnet.files import atomic_write, file_sha256
from gistnet.paths import path_under
from gistnet.shards import (
    shard_file_name,
    shard_glob,
)
from gistnet.sources import count_documents, document_range, planned_name, source_files

# Beside a split's shards: one manifest per part, the record finalize_dataset checks.
PARTS_DIR = ".parts"


@dataclass
class PrepProgress:
    split: str
    documents: int
    tokens: int
    examples: int
    # The part's index in its split, when the split is prepared in parts.
    part: int | None = None


# --------------------------------------------------------------------------- fingerprint


def _hash_file(h, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def _model_identity(name: str) -> str:
    """Content hash of a local model folder's small files plus weight sizes; the id otherwise."""
    path = Path(name)
    if not path.is_dir():
        return name
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        h.update(str(f.relative_to(path)).encode())
        if f.stat().st_size <= 16 << 20:
            _hash_file(h, f)
        else:  # multi-GB weights: name and size identify them well enough
            h.update(str(f.stat().st_size).encode())
    return h.hexdigest()


def dataset_fingerprint(config: DatasetConfig, base_dir: Path) -> str:
    """Changes whenever the stored data would: config values, input text, teacher, tokenizer.

    How a split is cut into shard files (`shards`) is left out: the rows are the same.
    Settings added later enter only when they differ from their default, so a dataset
    prepared before they existed keeps its fingerprint.
    """
    h = hashlib.sha256()
    data_fields = config.model_dump(include={"block_size", "horizon", "teacher_dtype"})
    if config.teacher_states != "cache":
        data_fields["teacher_states"] = config.teacher_states
    if config.stride not in (None, config.block_size):
        data_fields["stride"] = config.stride
    h.update(json.dumps(data_fields, sort_keys=True).encode())
    h.update(_model_identity(config.teacher_model).encode())
    h.update(_model_identity(config.tokenizer).encode())
    for name in sorted(config.splits):
        split = config.splits[name]
        h.update(json.dumps([name, split.max_files, split.max_tokens]).encode())
        if split.text_column != "text":
            h.update(json.dumps(["text_column", split.text_column]).encode())
        if split.stride is not None:
            h.update(json.dumps(["stride", config.split_stride(name)]).encode())
        if split.holdout is not None:
            h.update(json.dumps(["holdout", split.holdout.model_dump()]).encode())
        if split.documents is not None:
            for doc in split.documents:
                h.update(hashlib.sha256(doc.encode()).digest())
        else:
            for f in source_files(name, split, base_dir):
                h.update(f.name.encode())
                _hash_file(h, f)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the config's folders


def resolve_dataset_config(
    config: DatasetConfig, config_dir: str | Path | None
) -> tuple[DatasetConfig, Path]:
    """The config with its tokenizer and teacher folders made absolute, and the folder its
    relative paths are read from."""
    base_dir = Path(config_dir or ".").resolve()
    config = config.model_copy(
        update={
            "teacher_model": resolve_model_ref(config.teacher_model, base_dir),
            "tokenizer": resolve_model_ref(config.tokenizer, base_dir),
        }
    )
    return config, base_dir


# --------------------------------------------------------------------------- where shards go


def _output_path(name: str, split: SplitConfig, base_dir: Path, output_dir: Path | None) -> Path:
    if output_dir is not None:  # the service's folder: a name never leads out of it
        return path_under(output_dir, f"{name}.arrow")
    if split.output_path is None:
        raise ConfigError(f"split {name!r} has no output_path (a file path for its Arrow shard)")
    out = Path(split.output_path)
    return (out if out.is_absolute() else base_dir / out).resolve()


def shard_paths(
    name: str, split: SplitConfig, base_dir: Path, output_dir: Path | None
) -> list[Path]:
    """Where a split's shards go: `<split>.arrow` for one, else `<split>-00000-of-0000N.arrow`
    ... in the output folder (or beside the config's output_path, named by its stem)."""
    single = _output_path(name, split, base_dir, output_dir)
    if split.shards == 1:
        return [single]
    if output_dir is not None:
        names = [shard_file_name(name, i, split.shards) for i in range(split.shards)]
        return [path_under(output_dir, n) for n in names]
    return [
        single.parent / shard_file_name(single.stem, i, split.shards) for i in range(split.shards)
    ]


def _metadata(
    config: DatasetConfig,
    *,
    fingerprint: str,
    hidden_size: int,
    vocab_size: int,
    splits: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "dataset_name": config.dataset_name,
        "tokenizer": config.tokenizer,
        "teacher_model": config.teacher_model,
        "teacher_dtype": config.teacher_dtype,
        # cache: every example carries the block's states; none: tokens only.
        "teacher_states": config.teacher_states,
        "block_size": config.block_size,
        "horizon": config.horizon,
        "stride": config.stride or config.block_size,
        "teacher_hidden_size": hidden_size,
        "vocab_size": vocab_size,
        "fingerprint": fingerprint,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": splits,
    }


# --------------------------------------------------------------------------- in one process


def prepare_dataset(
    config: DatasetConfig,
    *,
    config_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    on_progress: Callable[[PrepProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    show_progress: bool = False,
    source_bounds: SourceBounds | None = None,
) -> dict[str, Any]:
    """Tokenize, cut into blocks, run the teacher (unless `teacher_states: none`) and write
    each split as one Arrow shard, or as `shards` of them: the plan, every part in turn,
    then the finalizer, the same steps the service's tasks run on many workers.

    Relative `source` and `output_path` values are read from `config_dir` (the config
    file's folder). With `output_dir`, every split goes to `<output_dir>/<split>.arrow`
    (`<split>-00000-of-0000N.arrow`, ... with several shards). Returns the metadata, also
    written as metadata.yaml beside the shards, with absolute shard paths. `source_bounds`
    (by default the defaults with GISTNET_LIMITS) holds what each source file may expand to.
    """
    config, base_dir = resolve_dataset_config(config, config_dir)
    out_dir = Path(output_dir).resolve() if output_dir is not None else None
    for name, split in config.splits.items():
        shard_paths(name, split, base_dir, out_dir)  # a split without a place fails first
    plan = plan_dataset(config, config_dir=base_dir, source_bounds=source_bounds)
    resources = load_prep_resources(config)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, dynamic_ncols=True)
    try:
        for name, split_plan in plan["splits"].items():
            manifests = []
            for part in split_plan["parts"]:
                if bar is not None:
                    count = part["count"]
                    bar.set_description(name if count == 1 else f"{name} {part['index'] + 1}/{count}")
                manifests.append(
                    prepare_part(
                        config,
                        plan=plan,
                        split=name,
                        index=part["index"],
                        config_dir=base_dir,
                        output_dir=out_dir,
                        resources=resources,
                        on_progress=on_progress,
                        should_cancel=should_cancel,
                        source_bounds=source_bounds,
                        _bar=bar,
                    )
                )
            if not any(m["examples"] for m in manifests):
                raise no_examples(name, config)  # before the teacher runs on the next split
    finally:
        if bar is not None:
            bar.close()
    return finalize_dataset(config, plan=plan, config_dir=base_dir, output_dir=out_dir)


# --------------------------------------------------------------------------- parts


def plan_dataset(
    config: DatasetConfig,
    *,
    config_dir: str | Path | None = None,
    source_bounds: SourceBounds | None = None,
) -> dict[str, Any]:
    """What each part of each split reads, as JSON-able data handed to every part.

    Part p of a split of N shards takes documents [p*D//N, (p+1)*D//N) of the split's D
    documents, so a document is never split and the examples do not depend on N. Reads
    every source file once to count its documents (Parquet: its footer only); a split of
    one shard needs no count. Also computes the fingerprint, which checks every source.
    """
    config, base_dir = resolve_dataset_config(config, config_dir)
    fingerprint = dataset_fingerprint(config, base_dir)
    splits: dict[str, Any] = {}
    for name, split in config.splits.items():
        counts = None
        if split.documents is not None:
            total = len(split.documents)
        elif split.shards == 1:
            total = None  # one part reads the whole split
        else:
            counts = [
                [
                    planned_name(f, base_dir),
                    count_documents(f, text_column=split.text_column, bounds=source_bounds),
                ]
                for f in source_files(name, split, base_dir)
            ]
            total = sum(count for _, count in counts)
        n = split.shards
        parts = [
            {
                "split": name,
                "index": i,
                "count": n,
                "start": 0 if total is None else i * total // n,
                "stop": None if total is None else (i + 1) * total // n,
            }
            for i in range(n)
        ]
        splits[name] = {"documents": total, "files": counts, "parts": parts}
    return {"fingerprint": fingerprint, "splits": splits}


def plan_parts(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every part of a plan, split by split, in order."""
    return [part for split in plan["splits"].values() for part in split["parts"]]


def _manifest_path(shard: Path) -> Path:
    return shard.parent / PARTS_DIR / f"{shard.name}.json"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _part_name(part: dict[str, Any], shard: Path) -> str:
    return f"split {part['split']!r} part {part['index'] + 1} of {part['count']} ({shard.name})"


def verify_part(manifest: dict[str, Any], shard: Path, schema: pa.Schema) -> None:
    """A part's shard is the file its part wrote: same size and sha256 as the manifest
    says, an Arrow file of the expected schema, holding the rows the part counted.
    Raises ShardError naming the part and what is wrong."""
    where = _part_name(manifest, shard)
    if not shard.is_file():
        raise ShardError(f"{where} is missing: its manifest is there but the file is not")
    size = shard.stat().st_size
    if size != manifest.get("bytes"):
        raise ShardError(
            f"{where} holds {size} bytes but its part wrote {manifest.get('bytes')}: the file was "
            f"damaged or replaced after it was written; prepare the dataset again"
        )
    if file_sha256(shard) != manifest.get("sha256"):
        raise ShardError(
            f"{where} does not match the checksum its part recorded: the file was damaged or "
            f"changed after it was written; prepare the dataset again"
        )
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(shard), "r"))
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"{where} is not a readable Arrow file: {err}") from None
    if not reader.schema.equals(schema):
        raise ShardError(f"{where} has columns {reader.schema.names} of other types than expected")
    if rows != manifest.get("examples"):
        raise ShardError(f"{where} holds {rows} rows but its part wrote {manifest.get('examples')}")


def prepare_part(
    config: DatasetConfig,
    *,
    plan: dict[str, Any],
    split: str,
    index: int,
    config_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    resources: PrepResources | None = None,
    on_progress: Callable[[PrepProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    source_bounds: SourceBounds | None = None,
    _bar=None,
) -> dict[str, Any]:
    """Write part `index` of `split` (its range of documents from `plan`) as one shard, and
    its manifest. Returns the manifest.

    Idempotent: a part whose shard and manifest are there from an earlier run with the
    same fingerprint, and verify (`verify_part`), is not written again; the manifest then
    says `"reused": true`. `resources` (a worker's loaded teacher) avoids loading again.
    """
    config, base_dir = resolve_dataset_config(config, config_dir)
    out_dir = Path(output_dir).resolve() if output_dir is not None else None
    spec = config.splits[split]
    part = plan["splits"][split]["parts"][index]
    out_path = shard_paths(split, spec, base_dir, out_dir)[index]
    manifest_path = _manifest_path(out_path)

    done = _read_manifest(manifest_path)
    if done is not None and done.get("fingerprint") == plan["fingerprint"]:
        try:
            verify_part(done, out_path, shard_schema_of(config, split, int(done["hidden_size"])))
            return {**done, "reused": True}
        except (ShardError, KeyError, TypeError, ValueError):
            pass  # not what its part wrote: write it again
    # A manifest must never vouch for a file other than the one it was written for.
    manifest_path.unlink(missing_ok=True)

    resources = resources or load_prep_resources(config)
    started = time.perf_counter()
    counters = {"documents": 0, "tokens": 0, "blocks": 0, "examples": 0}

    def report() -> None:
        if on_progress is not None:
            on_progress(
                PrepProgress(
                    split,
                    counters["documents"],
                    counters["tokens"],
                    counters["examples"],
                    part=index if part["count"] > 1 else None,
                )
            )

    texts = document_range(
        split,
        spec,
        base_dir,
        start=part["start"],
        stop=part["stop"],
        counts=[tuple(entry) for entry in plan["splits"][split]["files"] or []] or None,
        bounds=source_bounds,
    )
    write_shard(
        what=_part_name(part, out_path),
        split=split,
        windows=examples_of(
            texts,
            split=split,
            config=config,
            tokenizer=resources.tokenizer,
            counters=counters,
            bar=_bar,
        ),
        out_path=out_path,
        config=config,
        resources=resources,
        counters=counters,
        on_batch=report,
        should_cancel=should_cancel,
    )
    report()
    manifest = {
        **part,
        "path": out_path.name,
        **counters,
        "bytes": out_path.stat().st_size,
        "sha256": file_sha256(out_path),
        "seconds": round(time.perf_counter() - started, 3),
        "fingerprint": plan["fingerprint"],
        "teacher_states": config.teacher_states,
        "hidden_size": resources.hidden_size,
        "vocab_size": resources.vocab_size,
    }
    with atomic_write(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def finalize_dataset(
    config: DatasetConfig,
    *,
    plan: dict[str, Any],
    config_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Check every part against its manifest (`verify_part`: size, sha256, schema, rows)
    and write metadata.yaml, atomically. Raises ShardError naming the first part that is
    missing or damaged. Safe to run again: it checks and writes the same again.

    Returns the metadata as `prepare_dataset` does, with absolute shard paths.
    """
    config, base_dir = resolve_dataset_config(config, config_dir)
    out_dir = Path(output_dir).resolve() if output_dir is not None else None
    outputs: dict[str, list[Path]] = {}
    split_stats: dict[str, dict[str, Any]] = {}
    facts: set[tuple[int, int]] = set()
    for name, spec in config.splits.items():
        paths = outputs[name] = shard_paths(name, spec, base_dir, out_dir)
        manifests = []
        for part, path in zip(plan["splits"][name]["parts"], paths, strict=True):
            manifest = _read_manifest(_manifest_path(path))
            if manifest is None:
                raise ShardError(
                    f"{_part_name(part, path)} has no manifest: its part has not finished"
                )
            if manifest.get("fingerprint") != plan["fingerprint"]:
                raise ShardError(
                    f"{_part_name(part, path)} was prepared from other inputs or settings "
                    f"(fingerprint {manifest.get('fingerprint')}, not {plan['fingerprint']})"
                )
            width = int(manifest.get("hidden_size") or 0)
            verify_part(manifest, path, shard_schema_of(config, name, width))
            facts.add((width, int(manifest.get("vocab_size") or 0)))
            manifests.append(manifest)
        totals = {
            key: sum(int(m[key]) for m in manifests)
            for key in ("documents", "tokens", "blocks", "examples", "bytes")
        }
        if totals["examples"] == 0:
            raise no_examples(name, config)
        stats: dict[str, Any] = {
            "path": str(paths[0]),
            **totals,
            "seconds": round(sum(float(m["seconds"]) for m in manifests), 3),
        }
        if spec.stride is not None:  # a split cut otherwise than the dataset's stride says
            stats["stride"] = config.split_stride(name)
        if len(paths) > 1:
            stats["path"] = str(paths[0].parent / shard_glob(_stem_of(paths[0]), len(paths)))
            stats["shards"] = [
                {
                    "path": str(path),
                    "documents": int(m["documents"]),
                    "examples": int(m["examples"]),
                    "bytes": int(m["bytes"]),
                    "sha256": m["sha256"],
                }
                for path, m in zip(paths, manifests, strict=True)
            ]
        split_stats[name] = stats
    if len(facts) != 1:
        raise ShardError(
            f"the parts were prepared with teachers of different widths or vocabularies "
            f"({sorted(facts)}): prepare the dataset again"
        )
    hidden_size, vocab_size = facts.pop()
    metadata = _metadata(
        config,
        fingerprint=plan["fingerprint"],
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        splits=split_stats,
    )
    _write_metadata(metadata, outputs)
    return metadata


def _stem_of(shard: Path) -> str:
    """`train` of `train-00003-of-00008.arrow`."""
    return shard.name.rsplit("-", 3)[0]


# --------------------------------------------------------------------------- metadata


def relative_metadata(metadata: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The metadata with every shard path (and a split's glob) relative to `folder`."""
    local = dict(metadata)
    splits = {}
    for name, stats in metadata["splits"].items():
        entry = {**stats, "path": os.path.relpath(stats["path"], folder)}
        if "shards" in stats:
            entry["shards"] = [
                {**shard, "path": os.path.relpath(shard["path"], folder)}
                for shard in stats["shards"]
            ]
        splits[name] = entry
    local["splits"] = splits
    return local


def _write_metadata(metadata: dict[str, Any], outputs: dict[str, list[Path]]) -> None:
    """metadata.yaml in every folder that holds a shard; shard paths relative to it."""
    for folder in sorted({p.parent for paths in outputs.values() for p in paths}):
        with atomic_write(folder / METADATA_FILE) as tmp:
            tmp.write_text(yaml.safe_dump(relative_metadata(metadata, folder), sort_keys=False))
