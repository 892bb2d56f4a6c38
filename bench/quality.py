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
import shutil
import time
from pathlib import Path

import torch

from bench.report import interval_cell, replace_between_markers
from gistnet.config import load_run_file
from gistnet.eval.conditions import VECTORS
from gistnet.eval.report import format_table, write_report
from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet
from gistnet.files import file_sha256
from gistnet.train import TrainProgress, train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings

RUNS = {
    "substitution": "configs/runs/gistnet_substitution.yaml",
    "mse": "configs/runs/gistnet_example.yaml",
    "k2": "configs/runs/gistnet_substitution_k2.yaml",
    "k4": "configs/runs/gistnet_substitution_k4.yaml",
    # The substitution config again, on the dataset of a second teacher (--second-dataset).
    "second_teacher": "configs/runs/gistnet_substitution.yaml",
}
# What each run trains on, when not the split it is scored on: the substitution configs
# train on the densely cut text (configs/data/*_dense.yaml); mse reads cached states.
DENSE = {"substitution", "k2", "k4", "second_teacher"}
# The runs that trace GR against compression (32:1, 16:1, 8:1).
CURVE = ("substitution", "k2", "k4")
DOC = Path("docs/quality.md")
IMAGES = Path("docs/img")
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def markdown_table(report: dict) -> str:
    early = report["early_tokens"]
    lines = [
        f"| condition | NLL (nats/token) | ΔNLL [95% CI] | GR [95% CI] | GR from token 2 "
        f"| GR tokens {early + 1}+ | ΔNLL first {early} | ΔNLL rest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["conditions"].items():
        lines.append(
            f"| {name} | {entry['nll']['value']:.3f} | {interval_cell(entry['delta_nll'], signed=True)} "
            f"| {interval_cell(entry['gap_recovered'])} | {interval_cell(entry.get('gap_recovered_from_2'))} "
            f"| {interval_cell(entry.get('gap_recovered_rest'))} "
            f"| {interval_cell(entry['delta_nll_early'], signed=True)} "
            f"| {interval_cell(entry['delta_nll_late'], signed=True)} |"
        )
    return "\n".join(lines)


def bars_line(report: dict, vector: str = "gist") -> str:
    """The bars of `vector`: the gist, or the refined gist of a report with refinement."""
    comparisons = report["comparisons"]
    bars = report["quality_bars"]
    marks = {True: "met", False: "**missed**", None: "n/a"}
    entry = report["conditions"][vector]
    swapped = dict(VECTORS)[vector]
    lines = [
        f"- GR({vector}) − GR(mean) = "
        f"{interval_cell(comparisons[f'{vector}_minus_mean_gap_recovered'], signed=True)}"
        f" (interval above 0: {marks[bars[f'{vector}_above_mean_ci_excludes_0']]})",
        f"- GR({vector}) = {interval_cell(entry['gap_recovered'])}: ≥ 0.5 "
        f"{marks[bars[f'{vector}_gap_recovered_at_least_0.5']]}; target ≥ 0.70 "
        f"{marks[bars[f'{vector}_gap_recovered_at_least_0.7']]}",
        f"- GR({vector}) over tokens {report['early_tokens'] + 1}+ = "
        f"{interval_cell(entry.get('gap_recovered_rest'))}: target ≥ 0.40 "
        f"{marks[bars[f'{vector}_gap_recovered_rest_at_least_0.4']]}",
        f"- GR({swapped}) / GR({vector}) = "
        f"{interval_cell(comparisons[f'{swapped}_over_{vector}_gap_recovered'])}"
        f" (below 1/2: {marks[bars[f'{swapped}_below_half_of_{vector}']]}; target below 1/3: "
        f"{marks[bars[f'{swapped}_below_third_of_{vector}']]})",
    ]
    oracle = report.get("oracle")
    if oracle is not None:
        share = oracle["comparisons"][f"{vector}_over_oracle_gap_recovered"]
        lines.append(
            f"- GR({vector}) / GR(oracle) on the oracle's {oracle['n_examples']} examples = "
            f"{interval_cell(share)}: target ≥ 0.90 {marks[bars[f'{vector}_at_least_90pct_of_oracle']]}"
        )
    lines.append(f"- ΔNLL(drop) ≥ 0.1 nats/token: {marks[bars['drop_delta_nll_at_least_0.1']]}")
    return "\n".join(lines)


def oracle_table(report: dict) -> str:
    oracle = report["oracle"]
    search = oracle["search"]
    return "\n".join(
        [
            f"The oracle: a free vector set per example, started from the gist and fitted by "
            f"Adam (lr {search['lr']}) to the same KL until the batch's KL improved by less "
            f"than {search['min_improvement']:.1%} over {search['patience']} steps (at most "
            f"{search['max_steps']}; steps taken per batch: "
            f"{', '.join(map(str, search['steps_per_batch']))}; {search['seconds']:.0f} s), "
            f"on a seeded subset of {oracle['n_examples']} examples "
            f"({oracle['n_documents']} documents):",
            "",
            markdown_table(oracle),
        ]
    )


def _dense(dataset: Path) -> Path:
    """The densely cut twin of a dataset folder: `data/x` -> `data/x_dense`."""
    return dataset.with_name(f"{dataset.name}_dense")


def train_and_evaluate(
    name: str,
    config_path: str,
    *,
    dataset: Path,
    out: Path,
    skip_train: bool,
    oracle_examples: int | None,
    train_dataset: Path | None = None,
) -> dict:
    run_dir = out / name
    checkpoint = run_dir / "gistnet.pt"
    previous = run_dir / "evaluation.json"
    timing = {"train_seconds": None}
    if skip_train and checkpoint.is_file() and previous.is_file():
        earlier = json.loads(previous.read_text())
        same_model = earlier.get("checkpoint", {}).get("sha256") == file_sha256(checkpoint)
        if same_model and (earlier.get("oracle") is not None) == bool(oracle_examples):
            # The report of this very checkpoint, oracle included: nothing to recompute.
            print(f"\n== {name}: reusing {previous} ==\n{format_table(earlier)}\n", flush=True)
            return earlier
        # Keep the timing measured when the reused checkpoint was trained, and what on.
        timing = earlier.get("bench", {}).get("training", timing)
        trained_on = earlier.get("bench", {}).get("train_dataset")
        train_dataset = Path(trained_on) if trained_on else train_dataset
    if not skip_train or not checkpoint.is_file():
        run, log_every = load_run_file(config_path)

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
        result = train_gistnet(TrainRequest(dataset=train_dataset or dataset, output_dir=run_dir, settings=TrainSettings(split="train", run=run)), on_progress=log)
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
        EvalRequest(
            checkpoint=checkpoint,
            dataset=dataset,
            split="validation",
            settings=EvalSettings(oracle_examples=oracle_examples),
            device="cpu",
        )
    )
    report["bench"] = {
        "run_config": config_path,
        "dataset": str(dataset),
        "train_dataset": str(train_dataset or dataset),
        "training": timing,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, run_dir)
    print(f"\n== {name} ({config_path}) ==\n{format_table(report)}\n", flush=True)
    return report


TITLES = {
    "substitution": "`objective: substitution`, one gist per block (32:1)",
    "mse": "`objective: mse`",
    "k2": "two gists per block (16:1)",
    "k4": "four gists per block (8:1)",
    "second_teacher": "the second teacher: same config, same evaluation",
}


def _timing_line(report: dict) -> str:
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
    on = bench.get("train_dataset")
    data = f" on `{on}`" if on and on != bench["dataset"] else ""
    read = " Gists read after BOS (`bos_sink`)." if report.get("bos_sink") else ""
    return f"{steps} steps{data}, {trained}; evaluated in {bench['evaluate_seconds']:.0f} s.{read}"


def curve_table(reports: dict[str, dict]) -> str:
    lines = [
        "| vectors per block | compression | GR(gist) [95% CI] | GR tokens 9+ | GR(oracle) on its subset "
        "| GR(gist) on that subset | GR(gist) / GR(oracle) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in CURVE:
        if name not in reports:
            continue
        report = reports[name]
        gist = report["conditions"]["gist"]
        oracle = report.get("oracle")
        if oracle is not None:
            cells = (
                interval_cell(oracle["conditions"]["oracle"]["gap_recovered"]),
                interval_cell(oracle["conditions"]["gist"]["gap_recovered"]),
                interval_cell(oracle["comparisons"]["gist_over_oracle_gap_recovered"]),
            )
        else:
            cells = ("n/a", "n/a", "n/a")
        lines.append(
            f"| {report['gists_per_block']} | {report['compression']} "
            f"| {interval_cell(gist['gap_recovered'])} | {interval_cell(gist.get('gap_recovered_rest'))} "
            f"| {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def curve_plot(reports: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = [reports[name] for name in CURVE if name in reports]
    ratios = [r["block_size"] / r["gists_per_block"] for r in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, pick, style in (
        ("gist (all validation)", lambda r: r["conditions"]["gist"]["gap_recovered"], "o-"),
        (
            "oracle (its subset)",
            lambda r: (
                (r.get("oracle") or {}).get("conditions", {}).get("oracle", {}).get("gap_recovered")
            ),
            "s--",
        ),
    ):
        xs, ys, lows, highs = [], [], [], []
        for ratio, report in zip(ratios, points, strict=True):
            entry = pick(report)
            if entry is None or entry["value"] is None:
                continue
            xs.append(ratio)
            ys.append(entry["value"])
            low, high = entry.get("ci95") or (entry["value"], entry["value"])
            lows.append(entry["value"] - low)
            highs.append(high - entry["value"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lows, highs], fmt=style, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ratios, [f"{r:.0f}:1" for r in ratios])
    ax.invert_xaxis()
    ax.set_xlabel("compression (block tokens per gist vector)")
    ax.set_ylabel("gap recovered (GR)")
    ax.set_title("GR against compression, sample teacher")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def docs_section(reports: dict[str, dict], *, threads: int) -> str:
    first = next(iter(reports.values()))
    parts = [
        f"Measured by `python -m bench.quality --write-docs` on {platform.machine()} with "
        f"{threads} torch threads (torch {torch.__version__}), on all examples of each "
        f"dataset's validation split; {first['bootstrap_samples']} bootstrap resamples of the "
        f"**documents** (a cluster bootstrap over `doc_id`: overlapping windows of one "
        f"story are not independent). Sample: {first['n_examples']} examples in "
        f"{first['n_documents']} documents, dataset fingerprint "
        f"`{first['dataset']['fingerprint']}`.",
    ]
    if any(name in reports for name in CURVE):
        parts += [
            "",
            "### GR against compression (sample teacher)",
            "",
            curve_table(reports),
            "",
            "![GR against compression](img/quality_compression.png)",
        ]
    for name, report in reports.items():
        parts += [
            "",
            f"### {TITLES.get(name, name)} — `{report['bench']['run_config']}`",
            "",
        ]
        if name == "second_teacher":
            parts += [
                f"Dataset `{report['bench']['dataset']}` (teacher `{report['teacher']}`, "
                f"{report['n_examples']} validation examples in {report['n_documents']} "
                f"documents).",
                "",
            ]
        parts += [
            _timing_line(report),
            "",
            markdown_table(report),
            "",
            bars_line(report),
        ]
        if report.get("oracle") is not None:
            parts += ["", oracle_table(report)]
        parts += ["", f"![per-position NLL, {name}](img/quality_{name}.png)"]
    return "\n".join(parts)


def write_docs(reports: dict[str, dict], out: Path, *, threads: int) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    if any(name in reports for name in CURVE):
        curve_plot(reports, IMAGES / "quality_compression.png")
    for name in reports:
        shutil.copyfile(
            out / name / "evaluation_nll_per_position.png", IMAGES / f"quality_{name}.png"
        )
    replace_between_markers(DOC, BEGIN, END, docs_section(reports, threads=threads))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/sample_text", help="prepared dataset folder")
    parser.add_argument("--out", default="artifacts/quality")
    parser.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="which runs"
    )
    parser.add_argument(
        "--second-dataset",
        default="data/second_teacher",
        help="prepared dataset of the second teacher (configs/data/second_teacher.yaml)",
    )
    parser.add_argument(
        "--oracle-examples",
        type=int,
        default=64,
        help="oracle subset size for the substitution runs (0: no oracle)",
    )
    parser.add_argument("--skip-train", action="store_true", help="reuse existing checkpoints")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--write-docs", action="store_true", help="update docs/quality.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    reports = {
        name: train_and_evaluate(
            name,
            RUNS[name],
            dataset=Path(args.second_dataset if name == "second_teacher" else args.dataset),
            train_dataset=_dense(
                Path(args.second_dataset if name == "second_teacher" else args.dataset)
            )
            if name in DENSE
            else None,
            out=out,
            skip_train=args.skip_train,
            oracle_examples=(args.oracle_examples or None) if name != "mse" else None,
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
