"""Refined gists against the trained gist and the oracle, at several refinement settings.

For one checkpoint and the validation split, on the oracle's seeded subset (the one
`evaluate_gistnet(oracle_examples=n)` draws): GistNet's gists, the oracle (free vectors
fitted to each example with its true horizon), and the gists refined from the block
alone (`gistnet.refine`) with each setting given, all scored in one pass with document
intervals. Each setting is `samples:steps[:lr[:temperature]]`.

    python -m bench.refine --checkpoint artifacts/quality/substitution/gistnet.pt \\
        --settings 8:50 16:100 64:200:0.05:0.8 --device cuda:0 --out docs/data/refine.jsonl
    python -m bench.refine --report docs/data/refine.jsonl \\
        --evaluation artifacts/eval/evaluation.json   # the tables into docs/quality.md

Rows are appended to --out (JSON lines); --report writes the table of such a file
between the refine markers of docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gistnet.datasets import split_shard_paths
from gistnet.eval.conditions import evaluate_conditions
from gistnet.eval.oracle import fit_oracle_vectors, oracle_subset
from gistnet.eval.run import resolve_shard_path
from gistnet.eval.stats import summarize
from gistnet.files import file_sha256
from gistnet.inference import GistEncoder
from gistnet.refine import RefineSettings, refine_gists
from gistnet.shards import open_shard_set
from gistnet.substitution import drop_vector

DOC = Path("docs/quality.md")
BEGIN, END = "<!-- refine:begin -->", "<!-- refine:end -->"


def parse_setting(text: str) -> RefineSettings:
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected samples:steps[:lr[:temperature]]")
    samples, steps = int(parts[0]), int(parts[1])
    lr = float(parts[2]) if len(parts) > 2 else RefineSettings.lr
    temperature = float(parts[3]) if len(parts) > 3 else RefineSettings.temperature
    return RefineSettings(samples=samples, steps=steps, lr=lr, temperature=temperature)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args) -> list[dict]:
    resolve_shard_path(args.dataset, args.split)
    shard = open_shard_set(split_shard_paths(args.dataset, args.split, default_split="validation"))
    encoder = GistEncoder.from_checkpoint(args.checkpoint, device=args.device)
    device, teacher, block = encoder.device, encoder.teacher, encoder.block_size
    rows = oracle_subset(len(shard.context_input_ids), args.examples, seed=args.seed)
    context = torch.from_numpy(np.asarray(shard.context_input_ids[rows], dtype=np.int64))
    doc_ids = shard.document_ids()[rows]
    blocks = context[:, :block]
    sink = drop_vector(teacher, encoder.sink_token_id).to(device) if encoder.bos_sink else None

    gists = encoder.encode(blocks)
    started = time.perf_counter()
    oracle, _ = fit_oracle_vectors(teacher, context, block_size=block, init=gists, sink=sink)
    _sync(device)
    oracle_seconds = time.perf_counter() - started
    vectors, seconds = {"oracle": oracle}, {}
    for i, setting in enumerate(args.settings):
        started = time.perf_counter()
        vectors[f"refined_{i}"] = refine_gists(
            teacher, blocks, gists, settings=setting, tokens=context.shape[1] - block, sink=sink
        )
        _sync(device)
        seconds[i] = time.perf_counter() - started
        print(f"{setting}: {seconds[i]:.1f} s", flush=True)
    nll = evaluate_conditions(
        teacher, context, block_size=block, gist_vectors=gists, extra_vectors=vectors,
        tokenizer=encoder.tokenizer, bos_sink=encoder.bos_sink,
    )  # fmt: skip
    common = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "examples": len(rows),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "oracle_seconds": round(oracle_seconds, 1),
    }
    out = []
    for i, setting in enumerate(args.settings):
        name = f"refined_{i}"
        parts = {k: nll[k] for k in ("full", "drop", "mean", "gist", "oracle", name)}
        parts["refined"] = parts.pop(name)
        report = summarize(parts, bootstrap_samples=args.bootstrap, seed=args.seed, doc_ids=doc_ids)
        conditions = report["conditions"]
        out.append(
            {
                **common,
                "refine": setting.to_dict(),
                "seconds": round(seconds[i], 1),
                "ms_per_block": round(1000 * seconds[i] / len(rows), 1),
                "gr_gist": conditions["gist"]["gap_recovered"],
                "gr_oracle": conditions["oracle"]["gap_recovered"],
                "gr_refined": conditions["refined"]["gap_recovered"],
                "gr_refined_rest": conditions["refined"]["gap_recovered_rest"],
                "gist_over_oracle": report["comparisons"]["gist_over_oracle_gap_recovered"],
                "refined_over_oracle": report["comparisons"]["refined_over_oracle_gap_recovered"],
            }
        )
    return out


def _cell(entry) -> str:
    low, high = entry.get("ci95") or (None, None)
    text = f"{entry['value']:.3f}"
    return text if low is None else f"{text} [{low:.3f}, {high:.3f}]"


def report_section(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = rows[0]
    lines = [
        f"{len(rows)} settings from `{path}`: checkpoint `{first['checkpoint']}` (sha256 "
        f"`{first['checkpoint_sha256'][:12]}`), on the oracle's seeded {first['examples']} "
        f"validation examples, {first['device']}; intervals resample documents. GR(gist) "
        f"{_cell(first['gr_gist'])}, GR(oracle) {_cell(first['gr_oracle'])}, "
        f"GR(gist) / GR(oracle) {_cell(first['gist_over_oracle'])}. Time: refining these "
        f"{first['examples']} blocks, on that device.",
        "",
        "| samples | steps | lr | temperature | teacher passes per block | GR(refined) "
        "| GR tokens 9+ | GR(refined) / GR(oracle) | ms per block |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = r["refine"]
        lines.append(
            f"| {s['samples']} | {s['steps']} | {s['lr']} | {s['temperature']} "
            f"| {s['samples'] * s['steps']:,} | {_cell(r['gr_refined'])} "
            f"| {r['gr_refined_rest']['value']:.3f} | {_cell(r['refined_over_oracle'])} "
            f"| {r['ms_per_block']:,} |"
        )
    return "\n".join(lines)


def evaluation_section(path: Path) -> str:
    """An evaluation report with the refined condition (tools.evaluate_gistnet
    --refine-samples ...): its tables and the refined gist's bars."""
    from bench.quality import bars_line, markdown_table, oracle_table

    report = json.loads(path.read_text())
    refine = report["refine"]
    parts = [
        f"`{path}`: `python -m tools.evaluate_gistnet --checkpoint "
        f"{report['checkpoint']['path']} --dataset {report['dataset']['path']} --device "
        f"{report['device']} --oracle-examples {report['oracle']['n_examples']} "
        f"--refine-samples {refine['samples']} --refine-steps {refine['steps']} "
        f"--refine-temperature {refine['temperature']}` (checkpoint sha256 "
        f"`{report['checkpoint']['sha256'][:12]}`), all {report['n_examples']} validation "
        f"examples, {report['bootstrap_samples']} resamples of the {report['n_documents']} "
        f"documents. Refining the {report['n_examples']} gists took {refine['seconds']:.0f} s "
        f"on {report['device']} ({1000 * refine['seconds'] / report['n_examples']:.0f} ms a "
        f"block).",
        "",
        markdown_table(report),
        "",
        bars_line(report, "refined"),
        "",
        oracle_table(report),
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--dataset", default="data/sample_text")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--examples", type=int, default=64, help="the oracle's subset size")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[RefineSettings()])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("artifacts/refine.jsonl"))
    parser.add_argument("--report", type=Path, help="write this file's table into the docs")
    parser.add_argument(
        "--evaluation",
        type=Path,
        help="with --report: an evaluation.json with the refined condition, tabled below it",
    )
    args = parser.parse_args(argv)
    if args.report:
        from bench.report import replace_between_markers

        body = report_section(args.report)
        if args.evaluation:
            body += "\n\n" + evaluation_section(args.evaluation)
        replace_between_markers(DOC, BEGIN, END, body)
        return 0
    if args.checkpoint is None:
        parser.error("--checkpoint is required (or --report)")
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
    print(report_section(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
