"""Datasets as the seed's `tools/prepare_dataset.py` wrote them, made from ours.

The seed built every column from Python lists as variable-length Arrow lists (token ids
as int64, teacher_hidden as list<list<float32>>), wrote the whole split as one table, and
wrote `data/<dataset_name>/metadata.yaml` with per-split statistics but no shard paths,
no fingerprint and no top-level teacher_hidden_size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import yaml

from gistnet.datasets import read_metadata
from gistnet.shards import open_shard


def write_seed_shard(rows: dict[str, list], path: Path) -> Path:
    """Write columns given as Python lists exactly as the seed's write_arrow did."""
    table = pa.table(
        {
            "input_ids": pa.array(rows["input_ids"], type=pa.list_(pa.int64())),
            "attention_mask": pa.array(rows["attention_mask"], type=pa.list_(pa.int8())),
            "context_input_ids": pa.array(rows["context_input_ids"], type=pa.list_(pa.int64())),
            "context_attention_mask": pa.array(
                rows["context_attention_mask"], type=pa.list_(pa.int8())
            ),
            "teacher_hidden": pa.array(
                rows["teacher_hidden"], type=pa.list_(pa.list_(pa.float32()))
            ),
            "gist_target": pa.array(rows["gist_target"], type=pa.list_(pa.float32())),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def seed_rows(shard_path: Path, limit: int | None = None) -> dict[str, list]:
    """One of our shards' examples as the seed's Python lists."""
    shard = open_shard(shard_path)
    n = shard.num_examples if limit is None else min(limit, shard.num_examples)
    t, h = shard.block_size, shard.horizon
    return {
        "input_ids": shard.input_ids[:n].tolist(),
        "attention_mask": [[1] * t for _ in range(n)],
        "context_input_ids": shard.context_input_ids[:n].tolist(),
        "context_attention_mask": [[1] * h for _ in range(n)],
        "teacher_hidden": shard.teacher_hidden[:n].tolist(),
        "gist_target": shard.gist_target[:n].tolist(),
    }


def write_seed_dataset(
    ours: Path, out: Path, *, metadata: bool = True, limit: int | None = None
) -> Path:
    """Convert a dataset folder we prepared into the seed's layout under `out`:
    `<split>.arrow` for each split, and the seed's metadata.yaml unless `metadata` is False."""
    meta = read_metadata(ours)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, stats in meta["splits"].items():
        rows = seed_rows(ours / stats["path"], limit)
        write_seed_shard(rows, out / f"{name}.arrow")
        splits[name] = {
            "documents": stats["documents"],
            "blocks": stats["blocks"],
            "examples": len(rows["input_ids"]),
            "teacher_hidden_size": len(rows["gist_target"][0]),
        }
    if metadata:
        seed_meta = {
            "dataset_name": meta["dataset_name"],
            "tokenizer": meta["tokenizer"],
            "block_size": meta["block_size"],
            "horizon": meta["horizon"],
            "teacher_model": meta["teacher_model"],
            "teacher_dtype": "auto",  # the seed's default: chosen on the machine at hand
            "splits": splits,
        }
        (out / "metadata.yaml").write_text(yaml.safe_dump(seed_meta, sort_keys=False))
    return out


def copy_without_metadata(seed_dir: Path, out: Path, split: str = "train") -> Path:
    """One seed shard alone in a folder, as when its output_path pointed elsewhere."""
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(seed_dir / f"{split}.arrow", out / f"{split}.arrow"))
