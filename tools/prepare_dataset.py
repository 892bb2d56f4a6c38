"""Prepare a GistNet dataset: tokenize, cut into blocks, cache the teacher's states in Arrow.

python -m tools.prepare_dataset --config configs/data/sample_text.yaml

With `teacher_states: none` in the config only the token ids are stored (no teacher runs);
a split with `shards: N` is written as N files, part by part.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gistnet.config import load_dataset_config
from gistnet.data import prepare_dataset
from gistnet.errors import GistNetError
from gistnet.storage import writing_to


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="dataset config (YAML)")
    parser.add_argument(
        "--output-dir",
        help="write every split to <dir>/<split>.arrow instead of the config's output_path; "
        "a folder or an object-store URL (s3://bucket/prefix)",
    )
    parser.add_argument("--device", help="override teacher_device (cpu, cuda, cuda:N, auto)")
    args = parser.parse_args(argv)
    try:
        config = load_dataset_config(args.config)
        if args.device:
            config = config.model_validate({**config.model_dump(), "teacher_device": args.device})
        if args.output_dir is None:
            metadata = prepare_dataset(
                config, config_dir=Path(args.config).parent, show_progress=sys.stderr.isatty()
            )
        else:
            # On an object store: shards are written locally, then published, metadata last.
            with writing_to(args.output_dir) as output:
                metadata = prepare_dataset(
                    config,
                    config_dir=Path(args.config).parent,
                    output_dir=output,
                    show_progress=sys.stderr.isatty(),
                )
            for stats in metadata["splits"].values():
                stats["path"] = f"{str(args.output_dir).rstrip('/')}/{Path(stats['path']).name}"
    except GistNetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"dataset {metadata['dataset_name']} ({metadata['fingerprint']}): "
        f"teacher_hidden_size={metadata['teacher_hidden_size']} block_size={metadata['block_size']} "
        f"horizon={metadata['horizon']} teacher_states={metadata['teacher_states']}"
    )
    for name, s in metadata["splits"].items():
        rate = s["tokens"] / s["seconds"] if s["seconds"] else float("nan")
        shards = f", {len(s['shards'])} shards" if s.get("shards") else ""
        print(
            f"  {name}: {s['documents']} documents, {s['tokens']} tokens, {s['examples']} examples, "
            f"{s['bytes'] / 2**20:.1f} MiB{shards}, {s['seconds']:.1f} s ({rate:,.0f} tokens/s) "
            f"-> {s['path']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
