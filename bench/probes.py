"""Probes: the shipped substitution config with some changes, trained for --steps and
scored on --examples validation examples (0: all), one JSON line each in
<out>/probes.jsonl; --report writes the table of such a file into docs/quality.md.

    python -m bench.probes emb+pq4+mlp+L2+s2400 ds4+emb+s2400 --examples 0 \\
        --oracle 32 --device cuda:0 --parallel 8 --out artifacts/probes
    python -m bench.probes --report docs/data/probes_h200.jsonl

A probe is named by `+`-joined tokens, e.g. `emb+pq4+mlp+L2+s2400`: GistNet reading token
embeddings, 4 queries per gist, the gist MLP, 2 layers, trained 2,400 steps (`PROBE_FLAGS`,
`PROBE_TOKENS`); `base` is the config unchanged. Probes choose configs, so they look at
validation examples: docs/quality.md says so beside every figure they produced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.quality import DOC, RUNS
from bench.report import replace_between_markers
from gistnet.config import GistNetConfig
from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet
from gistnet.memory import gistnet_parameters
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings


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
    # the states of more teacher layers, one digit each: tl123 reads hidden states 1, 2, 3
    "tl": ("model", "teacher_layers", _layer_digits),
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
    from gistnet.config import read_run_yaml, validate_run_config

    data, _ = read_run_yaml(base_config)
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
        TrainRequest(
            dataset=train_on,
            output_dir=out / "probes" / name,
            settings=TrainSettings(split="train", run=run),
        )
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
        *("--threads", str(args.threads), "--steps", str(args.steps)),
        *("--examples", str(args.examples)),
    ]
    if args.oracle:
        common += ["--oracle", str(args.oracle)]
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started, failed = time.perf_counter(), 0
    waiting, running = list(names), {}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name = waiting.pop(0)
            cmd = [sys.executable, "-m", "bench.probes", name, *common]
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
    "nll_weight": lambda v: f"NLL weight {v:g}",
    # the next three name removed options, for the recorded probes that measured them
    "horizon_weighting": lambda v: f"KL weighting {v}",
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
    parser.add_argument("probes", nargs="*", help="base, or changes joined by + (probe_changes)")
    parser.add_argument("--dataset", default="data/sample_text", help="prepared dataset folder")
    parser.add_argument("--out", default="artifacts/quality")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=300, help="training steps per probe")
    parser.add_argument(
        "--examples", type=int, default=384, help="validation examples scored (0: all)"
    )
    parser.add_argument("--device", default="cpu", help="train and evaluate here")
    parser.add_argument("--parallel", type=int, default=1, help="run this many at once, in order")
    parser.add_argument(
        "--deadline", type=float, help="stop the probes still running after these seconds"
    )
    parser.add_argument("--oracle", type=int, default=None, help="oracle subset size")
    parser.add_argument(
        "--report",
        type=Path,
        help="write the table of this probes.jsonl into docs/quality.md, and stop",
    )
    args = parser.parse_args(argv)
    if args.report:
        write_probes_doc(args.report)
        return 0
    if not args.probes:
        parser.error("name at least one probe, or give --report")
    torch.set_num_threads(args.threads)
    if args.parallel > 1:
        return run_probes_in_parallel(args.probes, args)
    for name in args.probes:
        run_probe(
            name,
            base_config=RUNS["substitution"],
            dataset=Path(args.dataset),
            out=Path(args.out),
            steps=args.steps,
            examples=args.examples or None,
            oracle_examples=args.oracle,
            device=args.device,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
