"""Train GistNet with each objective on the sample, score both with ΔNLL@H, and write the
measured tables and plots into docs/quality.md.

    python -m tools.prepare_dataset --config configs/data/sample_text.yaml
    python -m bench.quality [--write-docs]

For each run config (substitution and mse by default) this trains on the train split with
`train_gistnet`, timing the whole call, then evaluates the checkpoint on the validation
split with `evaluate_gistnet` (every example, 1,000 bootstrap resamples). Reports and
plots go under --out; with --write-docs the tables replace the section between the
markers in docs/quality.md and the plots are copied to docs/img/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import torch

from gistnet.config import load_run_config
from gistnet.evaluate import evaluate_gistnet, format_table, write_report
from gistnet.train import TrainProgress, train_gistnet

RUNS = {
    "substitution": "configs/runs/gistnet_substitution.yaml",
    "mse": "configs/runs/gistnet_example.yaml",
}
DOC = Path("docs/quality.md")
IMAGES = Path("docs/img")
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def _cell(entry, digits: int = 3, signed: bool = False) -> str:
    if entry is None or entry["value"] is None:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{entry['value']:{sign}.{digits}f}"
    low, high = entry.get("ci95") or (None, None)
    if low is not None:
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return text


def markdown_table(report: dict) -> str:
    early = report["early_tokens"]
    lines = [
        f"| condition | NLL (nats/token) | ΔNLL [95% CI] | GR [95% CI] | ΔNLL first {early} | ΔNLL rest |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["conditions"].items():
        lines.append(
            f"| {name} | {entry['nll']['value']:.3f} | {_cell(entry['delta_nll'], signed=True)} "
            f"| {_cell(entry['gap_recovered'])} | {_cell(entry['delta_nll_early'], signed=True)} "
            f"| {_cell(entry['delta_nll_late'], signed=True)} |"
        )
    return "\n".join(lines)


def bars_line(report: dict) -> str:
    comparisons = report["comparisons"]
    bars = report["quality_bars"]
    marks = {True: "met", False: "**missed**", None: "n/a"}
    return "\n".join(
        [
            f"- GR(gist) − GR(mean) = {_cell(comparisons['gist_minus_mean_gap_recovered'], signed=True)}"
            f" (bar: interval above 0 — {marks[bars['gist_above_mean_ci_excludes_0']]})",
            f"- GR(gist) ≥ 0.5: {marks[bars['gist_gap_recovered_at_least_0.5']]}",
            f"- GR(swapped) / GR(gist) = {_cell(comparisons['swapped_over_gist_gap_recovered'])}"
            f" (bar: below 0.5 — {marks[bars['swapped_below_half_of_gist']]})",
            f"- ΔNLL(drop) ≥ 0.1 nats/token: {marks[bars['drop_delta_nll_at_least_0.1']]}",
        ]
    )


def train_and_evaluate(
    name: str, config_path: str, *, dataset: Path, out: Path, skip_train: bool
) -> dict:
    run_dir = out / name
    checkpoint = run_dir / "gistnet.pt"
    previous = run_dir / "evaluation.json"
    timing = {"train_seconds": None}
    if skip_train and checkpoint.is_file() and previous.is_file():
        # Keep the timing measured when the reused checkpoint was trained.
        timing = json.loads(previous.read_text()).get("bench", {}).get("training", timing)
    if not skip_train or not checkpoint.is_file():
        run = load_run_config(config_path)
        log_every = run.training.log_every

        def log(p: TrainProgress) -> None:
            if p.step % log_every == 0 or p.step == p.max_steps:
                val = f"  val {p.val_loss:.4f}" if p.val_loss is not None else ""
                print(
                    f"[{name}] step {p.step}/{p.max_steps}  loss {p.loss:.4f}  "
                    f"running {p.running_loss:.4f}  {p.examples_per_sec:,.0f} ex/s{val}",
                    flush=True,
                )

        load_before = os.getloadavg()[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train_gistnet(
            dataset_path=dataset / "train.arrow",
            run_config=run,
            output_dir=run_dir,
            on_progress=log,
        )
        # Wall clock is what the bar is about; CPU time and the machine's load average
        # say how much other work shared the cores meanwhile.
        timing = {
            "train_seconds": round(time.perf_counter() - started, 1),
            "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "steps": result.steps,
        }
        checkpoint = result.checkpoint_path
    started = time.perf_counter()
    report = evaluate_gistnet(
        checkpoint_path=checkpoint, dataset_path=dataset, split="validation", device="cpu"
    )
    report["bench"] = {
        "run_config": config_path,
        "training": timing,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, run_dir)
    print(f"\n== {name} ({config_path}) ==\n{format_table(report)}\n", flush=True)
    return report


def docs_section(reports: dict[str, dict], *, threads: int) -> str:
    first = next(iter(reports.values()))
    parts = [
        f"Measured by `python -m bench.quality --write-docs` on {platform.machine()} with "
        f"{threads} torch threads (torch {torch.__version__}), on all {first['n_examples']} "
        f"examples of the sample's validation split (dataset fingerprint "
        f"`{first['dataset']['fingerprint']}`), {first['bootstrap_samples']} bootstrap "
        f"resamples of the examples.",
    ]
    for name, report in reports.items():
        bench = report["bench"]
        timing = bench["training"]
        trained = (
            f"trained in **{timing['train_seconds']:.0f} s** wall clock "
            f"(`train_gistnet` end to end, teacher loading and validation passes included; "
            f"{timing['train_cpu_seconds']:.0f} s CPU; load average "
            f"{timing['load_average_before']:.1f} before, {timing['load_average_after']:.1f} after)"
            if timing.get("train_seconds") is not None
            else "training not timed (checkpoint reused)"
        )
        steps = report["checkpoint"]["info"].get("metrics", {}).get("steps")
        parts += [
            "",
            f"### `objective: {name}` — `{bench['run_config']}`",
            "",
            f"{steps} steps, {trained}; evaluated in {bench['evaluate_seconds']:.0f} s.",
            "",
            markdown_table(report),
            "",
            bars_line(report),
            "",
            f"![per-position NLL, {name}](img/quality_{name}.png)",
        ]
    return "\n".join(parts)


def write_docs(reports: dict[str, dict], out: Path, *, threads: int) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in reports:
        shutil.copyfile(
            out / name / "evaluation_nll_per_position.png", IMAGES / f"quality_{name}.png"
        )
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section")
    section = f"{BEGIN}\n{docs_section(reports, threads=threads)}\n{END}"
    DOC.write_text(pattern.sub(lambda _: section, text), encoding="utf-8")


# Short probes: the shipped substitution config with these changes, trained for
# --probe-steps and scored on a seeded subset of --probe-examples validation examples.
# They chose the candidate config, so they looked at validation examples: docs/quality.md
# says so beside every figure they produced.
PROBES: dict[str, dict[str, dict]] = {
    "base": {},
    "embeddings": {"model": {"token_embeddings": True}},
    "embeddings_2layers": {"model": {"token_embeddings": True, "num_layers": 2}},
    "embeddings_weighted": {
        "model": {"token_embeddings": True},
        "training": {"horizon_weighting": "block_dependence"},
    },
    "embeddings_lr5e-3": {"model": {"token_embeddings": True}, "training": {"lr": 5e-3}},
    "embeddings_mlp2": {"model": {"token_embeddings": True, "mlp_ratio": 2.0}},
    "k2": {"model": {"gists_per_block": 2}},
    "k4": {"model": {"gists_per_block": 4}},
}


def run_probe(
    name: str,
    *,
    base_config: str,
    dataset: Path,
    out: Path,
    steps: int,
    examples: int,
    oracle_examples: int | None,
) -> dict:
    """Train the base config with PROBES[name]'s changes for `steps`, score it on a seeded
    validation subset; append one line to <out>/probes.jsonl and return it."""
    from gistnet.config import read_yaml, validate_run_config

    data = read_yaml(base_config)
    for section, changes in PROBES[name].items():
        data[section] = {**data.get(section, {}), **changes}
    data["training"] = {**data["training"], "max_steps": steps, "eval_every": steps}
    run = validate_run_config(data)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = train_gistnet(
        dataset_path=dataset / "train.arrow", run_config=run, output_dir=out / "probes" / name
    )
    train_seconds = time.perf_counter() - started
    report = evaluate_gistnet(
        checkpoint_path=result.checkpoint_path,
        dataset_path=dataset,
        split="validation",
        device="cpu",
        max_examples=examples,
        bootstrap_samples=200,
        oracle_examples=oracle_examples,
    )
    gist = report["conditions"]["gist"]
    line = {
        "probe": name,
        "changes": PROBES[name],
        "steps": steps,
        "examples": report["n_examples"],
        "gr": gist["gap_recovered"]["value"],
        "gr_ci95": gist["gap_recovered"]["ci95"],
        "gr_from_2": gist["gap_recovered_from_2"]["value"],
        "gr_rest": gist["gap_recovered_rest"]["value"],
        "gr_mean": report["conditions"]["mean"]["gap_recovered"]["value"],
        "swapped_over_gist": report["comparisons"]["swapped_over_gist_gap_recovered"]["value"],
        "gist_over_oracle": (report.get("oracle") or {})
        .get("comparisons", {})
        .get("gist_over_oracle_gap_recovered", {})
        .get("value"),
        "train_seconds": round(train_seconds, 1),
        "load_average_before": round(load_before, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "probes.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/sample_text", help="prepared dataset folder")
    parser.add_argument("--out", default="artifacts/quality")
    parser.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="which objectives"
    )
    parser.add_argument("--skip-train", action="store_true", help="reuse existing checkpoints")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--write-docs", action="store_true", help="update docs/quality.md")
    parser.add_argument("--probe", nargs="+", choices=list(PROBES), help="run short probes")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--probe-examples", type=int, default=384)
    parser.add_argument("--probe-oracle", type=int, default=None, help="oracle subset size")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.probe:
        for name in args.probe:
            run_probe(
                name,
                base_config=RUNS["substitution"],
                dataset=Path(args.dataset),
                out=out,
                steps=args.probe_steps,
                examples=args.probe_examples,
                oracle_examples=args.probe_oracle,
            )
        return 0
    reports = {
        name: train_and_evaluate(
            name, RUNS[name], dataset=Path(args.dataset), out=out, skip_train=args.skip_train
        )
        for name in args.runs
    }
    (out / "summary.json").write_text(
        json.dumps(
            {name: {**r["quality_bars"], **r["bench"]} for name, r in reports.items()}, indent=2
        )
    )
    if args.write_docs:
        write_docs(reports, out, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
