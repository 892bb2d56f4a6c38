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
import sys
import time
from pathlib import Path

import torch

from bench.report import replace_between_markers
from gistnet.config import GistNetConfig, load_run_config
from gistnet.eval.conditions import VECTORS
from gistnet.eval.report import format_table, write_report
from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet
from gistnet.memory import gistnet_parameters
from gistnet.storage import file_sha256
from gistnet.train import TrainProgress, train_gistnet

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
        f"| condition | NLL (nats/token) | ΔNLL [95% CI] | GR [95% CI] | GR from token 2 "
        f"| GR tokens {early + 1}+ | ΔNLL first {early} | ΔNLL rest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["conditions"].items():
        lines.append(
            f"| {name} | {entry['nll']['value']:.3f} | {_cell(entry['delta_nll'], signed=True)} "
            f"| {_cell(entry['gap_recovered'])} | {_cell(entry.get('gap_recovered_from_2'))} "
            f"| {_cell(entry.get('gap_recovered_rest'))} "
            f"| {_cell(entry['delta_nll_early'], signed=True)} "
            f"| {_cell(entry['delta_nll_late'], signed=True)} |"
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
        f"{_cell(comparisons[f'{vector}_minus_mean_gap_recovered'], signed=True)}"
        f" (interval above 0: {marks[bars[f'{vector}_above_mean_ci_excludes_0']]})",
        f"- GR({vector}) = {_cell(entry['gap_recovered'])}: ≥ 0.5 "
        f"{marks[bars[f'{vector}_gap_recovered_at_least_0.5']]}; target ≥ 0.70 "
        f"{marks[bars[f'{vector}_gap_recovered_at_least_0.7']]}",
        f"- GR({vector}) over tokens {report['early_tokens'] + 1}+ = "
        f"{_cell(entry.get('gap_recovered_rest'))}: target ≥ 0.40 "
        f"{marks[bars[f'{vector}_gap_recovered_rest_at_least_0.4']]}",
        f"- GR({swapped}) / GR({vector}) = "
        f"{_cell(comparisons[f'{swapped}_over_{vector}_gap_recovered'])}"
        f" (below 1/2: {marks[bars[f'{swapped}_below_half_of_{vector}']]}; target below 1/3: "
        f"{marks[bars[f'{swapped}_below_third_of_{vector}']]})",
    ]
    oracle = report.get("oracle")
    if oracle is not None:
        share = oracle["comparisons"][f"{vector}_over_oracle_gap_recovered"]
        lines.append(
            f"- GR({vector}) / GR(oracle) on the oracle's {oracle['n_examples']} examples = "
            f"{_cell(share)}: target ≥ 0.90 {marks[bars[f'{vector}_at_least_90pct_of_oracle']]}"
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
            dataset_path=train_dataset or dataset,
            split="train",
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
    return (
        f"{steps} steps{data}, {trained}; evaluated in {bench['evaluate_seconds']:.0f} s.{read}"
    )


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
                _cell(oracle["conditions"]["oracle"]["gap_recovered"]),
                _cell(oracle["conditions"]["gist"]["gap_recovered"]),
                _cell(oracle["comparisons"]["gist_over_oracle_gap_recovered"]),
            )
        else:
            cells = ("n/a", "n/a", "n/a")
        lines.append(
            f"| {report['gists_per_block']} | {report['compression']} "
            f"| {_cell(gist['gap_recovered'])} | {_cell(gist.get('gap_recovered_rest'))} "
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


# Probes: the shipped substitution config with some changes, trained for --probe-steps
# and scored on --probe-examples validation examples (0: all). They choose configs, so they
# look at validation examples: docs/quality.md says so beside every figure they produced.
# A probe is the substitution config with changes named by `+`-joined tokens, e.g.
# `emb+pq4+mlp+L2+s2400`: GistNet reading token embeddings, 4 queries per gist, the gist
# MLP, 2 layers, trained 2,400 steps. `base` is the config unchanged.
def _layer_digits(digits: str) -> tuple[int, ...]:
    """`tl023` -> teacher layers (0, 2, 3): one digit per hidden state."""
    if not digits:
        raise ValueError("name at least one teacher layer")
    return tuple(int(d) for d in digits)


PROBE_TOKENS: dict[str, tuple[str, str, object]] = {
    # prefix: (section, key, type of the number that follows)
    "L": ("model", "num_layers", int),
    "h": ("model", "num_heads", int),
    "pq": ("model", "pool_queries", int),
    "k": ("model", "gists_per_block", int),
    "r": ("model", "mlp_ratio", float),
    "lr": ("training", "lr", float),
    "bs": ("training", "batch_size", int),
    "wu": ("training", "warmup", int),
    "floor": ("training", "final_lr_ratio", float),
    "nll": ("training", "nll_weight", float),
    "s": ("training", "max_steps", int),
    "rec": ("training", "reconstruction_steps", int),
    # the states of more teacher layers, one digit each: tl123 reads hidden states 1, 2, 3
    "tl": ("model", "teacher_layers", _layer_digits),
    "recw": ("training", "reconstruction_weight", float),
    "rw": ("training", "rest_weight", float),
    # train on <dataset>_ds<N>: the same text cut with stride N (prepared beforehand from
    # configs/data/sample_text_dense.yaml with its stride and name changed); scored on
    # --dataset's validation split like every probe
    "ds": ("data", "stride", int),
    # train on <dataset>_n<N>: the sample generator's first N thousand training stories
    # (`tools.make_sample_teacher --corpus-only --train-docs N000`; the first 1,300 are the
    # shipped train split, the validation stories are the shipped ones), with `ds` too:
    # <dataset>_n<N>_ds<S>
    "n": ("data", "thousand_stories", int),
}
PROBE_FLAGS: dict[str, tuple[str, str, object]] = {
    "emb": ("model", "token_embeddings", True),
    "mlp": ("model", "gist_mlp", True),
    "bd": ("training", "horizon_weighting", "block_dependence"),
    "sink": ("model", "bos_sink", True),
}


def probe_changes(name: str) -> dict[str, dict]:
    """`emb+pq4+s2400` -> {"model": {...}, "training": {...}}; a clear error for a bad token."""
    changes: dict[str, dict] = {"model": {}, "training": {}, "data": {}}
    for token in name.split("+"):
        if token == "base":
            continue
        found = PROBE_FLAGS.get(token)
        if found is None:
            # the longest prefix that matches, so `floor0` is not read as `f...`
            for prefix in sorted(PROBE_TOKENS, key=len, reverse=True):
                if token.startswith(prefix):
                    section, key, kind = PROBE_TOKENS[prefix]
                    try:
                        found = (section, key, kind(token[len(prefix) :]))
                    except ValueError:
                        pass
                    break
        if found is None:
            raise SystemExit(
                f"probe token {token!r} is not one of base, {', '.join(PROBE_FLAGS)} or a "
                f"prefix {', '.join(PROBE_TOKENS)} followed by a number"
            )
        section, key, value = found
        if key in changes[section]:
            raise SystemExit(f"probe {name!r} sets {key} twice")
        changes[section][key] = value
    return changes


def probe_train_dataset(dataset: Path, changes: dict[str, dict]) -> Path:
    """Where a probe trains: `data/x` itself, or `data/x_n20`, `data/x_ds4`, `data/x_n20_ds4`."""
    stories, stride = changes["data"].get("thousand_stories"), changes["data"].get("stride")
    suffix = (f"_n{stories}" if stories else "") + (f"_ds{stride}" if stride else "")
    return dataset.with_name(dataset.name + suffix)


def run_probe(
    name: str,
    *,
    base_config: str,
    dataset: Path,
    out: Path,
    steps: int,
    examples: int | None,
    oracle_examples: int | None,
    device: str = "cpu",
) -> dict:
    """Train the base config with the probe's changes (`probe_changes`), score it on the
    validation split (a seeded subset of `examples`, or all); append one line to
    <out>/probes.jsonl and return it."""
    from gistnet.config import read_yaml, validate_run_config

    data = read_yaml(base_config)
    changes = probe_changes(name)
    for section in ("model", "training"):
        data[section] = {**data.get(section, {}), **changes[section]}
    train_on = probe_train_dataset(dataset, changes)
    steps = changes["training"].get("max_steps", steps)  # an `s` token wins over --probe-steps
    # four validation losses along the way say whether it was still improving
    data["training"] = {**data["training"], "max_steps": steps, "eval_every": max(1, steps // 4)}
    data["training"]["device"] = device
    run = validate_run_config(data)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = train_gistnet(
        dataset_path=train_on, split="train", run_config=run, output_dir=out / "probes" / name
    )
    train_seconds = time.perf_counter() - started
    settings = EvalSettings(
        max_examples=examples, bootstrap_samples=200, oracle_examples=oracle_examples
    )
    report = evaluate_gistnet(
        EvalRequest(
            checkpoint=result.checkpoint_path,
            dataset=dataset,
            split="validation",
            settings=settings,
            device=device,
        )
    )
    gist = report["conditions"]["gist"]
    oracle = report.get("oracle") or {}
    line = {
        "probe": name,
        "changes": changes,
        "steps": steps,
        "device": device,
        "examples": report["n_examples"],
        "gr": gist["gap_recovered"]["value"],
        "gr_ci95": gist["gap_recovered"]["ci95"],
        "gr_from_2": gist["gap_recovered_from_2"]["value"],
        "gr_rest": gist["gap_recovered_rest"]["value"],
        "gr_mean": report["conditions"]["mean"]["gap_recovered"]["value"],
        "swapped_over_gist": report["comparisons"]["swapped_over_gist_gap_recovered"]["value"],
        "gr_oracle": oracle.get("conditions", {})
        .get("oracle", {})
        .get("gap_recovered", {})
        .get("value"),
        "gist_over_oracle": oracle.get("comparisons", {})
        .get("gist_over_oracle_gap_recovered", {})
        .get("value"),
        "final_val_loss": result.val_loss,
        "val_curve": [
            [h["step"], round(h["val_loss"], 4)] for h in result.history if "val_loss" in h
        ],
        "final_running_loss": result.running_loss,
        "parameters": gistnet_parameters(
            GistNetConfig(**report["checkpoint"]["info"]["model_config"])
        ),
        "train_seconds": round(train_seconds, 1),
        "load_average_before": round(load_before, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    with (out / "probes.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)
    return line


def run_probes_in_parallel(names: list[str], args) -> int:
    """Each probe in a process of its own (logs under <out>/logs), `args.parallel` at a
    time, in the order given; with a deadline, probes still running then are stopped.
    Returns 1 if any probe failed or was stopped."""
    import subprocess

    for name in names:
        probe_changes(name)  # a bad name fails now, not after the others ran
    common = [
        *("--dataset", str(args.dataset), "--out", str(args.out), "--device", args.device),
        *("--threads", str(args.threads), "--probe-steps", str(args.probe_steps)),
        *("--probe-examples", str(args.probe_examples)),
    ]
    if args.probe_oracle:
        common += ["--probe-oracle", str(args.probe_oracle)]
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started, failed = time.perf_counter(), 0
    waiting, running = list(names), {}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name = waiting.pop(0)
            cmd = [sys.executable, "-m", "bench.quality", "--probe", name, *common]
            with (logs / f"{name}.log").open("w") as log:  # the child holds its own handle
                running[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"{name}: exit {proc.returncode} at {time.perf_counter() - started:.0f} s")
                failed += proc.returncode != 0
                del running[name]
        if args.deadline is not None and time.perf_counter() - started > args.deadline:
            for name, proc in running.items():
                proc.kill()
                proc.wait()
                print(f"{name}: stopped at the deadline")
            print(f"not started: {' '.join(waiting) or 'none'}")
            return 1
    return 1 if failed else 0


PROBES_BEGIN, PROBES_END = "<!-- probes:begin -->", "<!-- probes:end -->"


_SHORT = {
    "token_embeddings": lambda v: "token embeddings",
    "pool_queries": lambda v: f"{v} queries per gist",
    "gist_mlp": lambda v: "gist MLP",
    "bos_sink": lambda v: "**read after BOS**",
    "num_layers": lambda v: f"{v} layers",
    "num_heads": lambda v: f"{v} heads",
    "gists_per_block": lambda v: f"**k = {v}**",
    "mlp_ratio": lambda v: f"MLP ratio {v:g}",
    "lr": lambda v: f"lr {v:g}",
    "batch_size": lambda v: f"batch {v}",
    "warmup": lambda v: f"warm-up {v}",
    "final_lr_ratio": lambda v: f"decay to {v:g}",
    "horizon_weighting": lambda v: f"KL weighting {v}",
    "nll_weight": lambda v: f"NLL weight {v:g}",
    "reconstruction_steps": lambda v: f"{v} reconstruction steps first",
    "reconstruction_weight": lambda v: f"reconstruction weight {v:g}",
    "rest_weight": lambda v: f"KL of tokens 9+ weighted {v:g}",
    "teacher_layers": lambda v: f"**teacher layers {', '.join(map(str, v))}**",
}


def _describe_changes(changes: dict[str, dict]) -> str:
    parts = [_SHORT.get(key, lambda v, k=key: f"{k} {v}")(value)
             for section in ("model", "training") for key, value in
             changes.get(section, {}).items() if key != "max_steps"]  # fmt: skip
    return ", ".join(parts) or "none (the old config)"


def probes_section(path: Path) -> str:
    """A markdown table of the probe lines in `path` (probes.jsonl), best GR first."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no probes")
    lines.sort(key=lambda r: -r["gr"])

    def cell(value, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    rows = []
    for r in lines:
        low, high = r["gr_ci95"]
        stride = r["changes"].get("data", {}).get("stride")
        stories = r["changes"].get("data", {}).get("thousand_stories")
        rows.append(
            f"| {_describe_changes(r['changes'])} | {f'{stories},000' if stories else '1,300'} "
            f"| {stride or 'one block'} | {r['steps']} "
            f"| {r['gr']:.3f} [{low:.3f}, {high:.3f}] | {r['gr_from_2']:.3f} | {r['gr_rest']:.3f} "
            f"| {cell(r.get('gr_oracle'))} | {cell(r.get('gist_over_oracle'))} "
            f"| {r['swapped_over_gist']:.3f} | {cell(r.get('final_running_loss'))} "
            f"| {cell(r.get('final_val_loss'))} "
            f"| {cell(r.get('parameters'), ',')} |"
        )
    devices = sorted({r.get("device", "cpu") for r in lines})
    examples = sorted({r["examples"] for r in lines})
    return (
        f"{len(lines)} probes from `{path}`, trained on {', '.join(devices)}; scored on "
        f"{' or '.join(map(str, examples))} validation examples (200 resamples for the "
        "intervals); GR(oracle) and gist / oracle on the seeded oracle subset where it ran. "
        "Train KL: the training loss over the last 50 steps; validation KL: the last "
        "validation pass of training, on the validation split of the dataset the probe "
        "trained on (its stride); both the whole loss, so not the KL alone for probes with "
        "reconstruction, a KL weighting, a weight on tokens 9+ or an NLL weight.\n\n"
        "| changes | training stories | stride | steps | GR [95% CI] | GR from 2 | GR 9+ "
        "| GR(oracle) | gist / oracle | swapped / gist | train KL (last 50 steps) "
        "| validation KL | parameters |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )


def write_probes_doc(path: Path) -> None:
    replace_between_markers(DOC, PROBES_BEGIN, PROBES_END, probes_section(path))


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
    parser.add_argument(
        "--probe", nargs="+", help="run probes: base, or changes joined by + (probe_changes)"
    )
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument(
        "--probe-examples", type=int, default=384, help="validation examples scored (0: all)"
    )
    parser.add_argument("--device", default="cpu", help="probes: train and evaluate here")
    parser.add_argument(
        "--parallel", type=int, default=1, help="probes: run this many at once, in order"
    )
    parser.add_argument(
        "--deadline", type=float, help="probes: stop those still running after these seconds"
    )
    parser.add_argument("--probe-oracle", type=int, default=None, help="oracle subset size")
    parser.add_argument(
        "--probe-report",
        type=Path,
        help="write the table of this probes.jsonl into docs/quality.md, and stop",
    )
    args = parser.parse_args(argv)
    if args.probe_report:
        write_probes_doc(args.probe_report)
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.probe and args.parallel > 1:
        return run_probes_in_parallel(args.probe, args)
    if args.probe:
        for name in args.probe:
            run_probe(
                name,
                base_config=RUNS["substitution"],
                dataset=Path(args.dataset),
                out=out,
                steps=args.probe_steps,
                examples=args.probe_examples or None,
                oracle_examples=args.probe_oracle,
                device=args.device,
            )
        return 0
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
