"""The long-document evaluation over a grid of context sizes: GR_long and each condition's
NLL for every GistNet named, at C in --contexts (R fixed at --at-recent) and at R in
--recents (C fixed at --at-context), as a table and a plot in a section of
docs/quality.md (between `<!-- long-curve:NAME -->` markers), and JSON.

    python -m bench.long_curve --dataset data/long_text_long_teacher \\
        --model single=artifacts/long_single/gistnet.pt \\
        --model multiblock=artifacts/long_multiblock/gistnet.pt \\
        --contexts 128 256 384 512 --recents 32 64 128 256 --section long_teacher \\
        --plot docs/img/long_curve_long_teacher.png --json artifacts/long_curve.json

Every point is one `evaluate_gistnet` call of `--mode long` on the same windows (their
first C + S tokens), so the points of one model differ only in C and R.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from bench.report import interval_cell, replace_between_markers
from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet

QUALITY_MD = Path(__file__).resolve().parents[1] / "docs" / "quality.md"


def grid(contexts, recents, *, at_context: int, at_recent: int, block_size: int) -> list:
    """(C, R) points: each C at R = at_recent, each R at C = at_context; those that leave
    no whole block to compress are left out."""
    points = [(c, at_recent) for c in contexts] + [(at_context, r) for r in recents]
    keep = []
    for c, r in points:
        if c - r >= block_size and (c - r) % block_size == 0 and (c, r) not in keep:
            keep.append((c, r))
    return keep


def table(reports: dict[str, list[dict]]) -> str:
    lines = [
        "| model | C | R | B | NLL full | truncated | compressed | mean | recent "
        "| GR_long(compressed) | GR_long(mean) | NLL(mean) − NLL(compressed) |",
        "|" + " --- |" * 12,
    ]
    for name, points in reports.items():
        for report in points:
            c = report["conditions"]
            nll = [f"{c[k]['nll']['value']:.3f}" for k in ("full", "truncated", "compressed",
                                                           "mean", "recent")]  # fmt: skip
            lines.append(
                f"| {name} | {report['context_tokens']} | {report['recent_tokens']} "
                f"| {report['compressed_positions']} | {' | '.join(nll)} "
                f"| {interval_cell(c['compressed']['gap_recovered_long'])} "
                f"| {interval_cell(c['mean']['gap_recovered_long'], digits=2)} "
                f"| {interval_cell(report['comparisons']['mean_minus_compressed_nll'], signed=True)} |"
            )
    return "\n".join(lines)


def plot(reports: dict[str, list[dict]], path: Path, *, at_context: int, at_recent: int) -> Path:
    """Each condition's NLL above the full context's (ΔNLL, nats a token, 95% intervals)
    over C and over R: truncation's line is what the gists must get under. ΔNLL rather
    than GR_long, which is a ratio of noise wherever truncation loses little."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    panels = (
        (axes[0], "context_tokens", "recent_tokens", at_recent, f"C (R = {at_recent})"),
        (axes[1], "recent_tokens", "context_tokens", at_context, f"R (C = {at_context})"),
    )
    first = next(iter(reports))
    lines = [(first, "truncated", "k--", "truncated"), (first, "mean", "s:", "mean")]
    lines += [(name, "compressed", "o-", f"{name}: compressed") for name in reports]
    for ax, x_key, fixed_key, fixed, label in panels:
        for name, condition, style, legend in lines:
            chosen = sorted(
                (r for r in reports[name] if r[fixed_key] == fixed), key=lambda r: r[x_key]
            )
            xs, ys, err = [], [], [[], []]
            for report in chosen:
                entry = report["conditions"][condition]["delta_nll"]
                if entry["value"] is None:
                    continue
                xs.append(report[x_key])
                ys.append(entry["value"])
                low, high = entry.get("ci95") or (entry["value"], entry["value"])
                err[0].append(entry["value"] - low)
                err[1].append(high - entry["value"])
            if xs:
                ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=legend)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NLL − NLL(full), nats a token")
    axes[1].legend(fontsize=8)
    fig.suptitle("Scored tokens after a long context, 32:1: what each context loses")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def docs_section(reports, *, command: str, plot_path: Path | None, seconds: float) -> str:
    first = next(iter(reports.values()))[0]
    lines = [
        f"{first['n_examples']} windows of {first['n_documents'] or first['n_examples']} "
        f"documents, S = {first['score_tokens']} scored tokens, 95% intervals over "
        f"{first['resampling']} ({first['bootstrap_samples']} resamples); "
        f"B = the compressed context's positions (truncated reads the last B tokens). "
        f"Measured in {seconds:.0f} s by",
        "",
        "```bash",
        command,
        "```",
        "",
        table(reports),
    ]
    if plot_path is not None:
        try:
            shown = plot_path.resolve().relative_to(QUALITY_MD.parent)
        except ValueError:
            shown = plot_path
        lines += ["", f"![each condition's NLL above the full context's, over C and R]({shown})"]
    return "\n".join(lines)


def write_json(reports: dict[str, list[dict]], path: Path) -> None:
    slim = {n: [{k: v for k, v in r.items() if k != "provenance"} for r in rs]
            for n, rs in reports.items()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(slim, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 256, 384, 512])
    parser.add_argument("--recents", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--at-context", type=int, default=512)
    parser.add_argument("--at-recent", type=int, default=64)
    parser.add_argument("--score-tokens", type=int, default=64)
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--section", help="write the docs section of this name")
    parser.add_argument("--docs", type=Path, default=QUALITY_MD, help="the page it goes in")
    args = parser.parse_args(argv)

    models = dict(item.split("=", 1) for item in args.model)
    points = grid(args.contexts, args.recents, at_context=args.at_context,
                  at_recent=args.at_recent, block_size=args.block_size)  # fmt: skip
    started = time.perf_counter()
    reports: dict[str, list[dict]] = {}
    for name, checkpoint in models.items():
        reports[name] = []
        for context, recent in points:
            settings = EvalSettings(
                max_examples=args.max_examples, bootstrap_samples=args.bootstrap_samples,
                mode="long", context_tokens=context, recent_tokens=recent,
                score_tokens=args.score_tokens,
            )  # fmt: skip
            request = EvalRequest(
                checkpoint=Path(checkpoint), dataset=Path(args.dataset), split=args.split,
                settings=settings, device=args.device, batch_size=args.batch_size,
                teacher_dtype=args.teacher_dtype,
            )  # fmt: skip
            report = evaluate_gistnet(request)
            gr = report["conditions"]["compressed"]["gap_recovered_long"]["value"]
            print(f"{name}: C {context} R {recent}: GR_long(compressed) "
                  f"{'n/a' if gr is None else f'{gr:.3f}'}", flush=True)  # fmt: skip
            reports[name].append(report)
            if args.json is not None:  # after every point: a failure later keeps these
                write_json(reports, args.json)
    seconds = time.perf_counter() - started
    if args.plot is not None:
        plot(reports, args.plot, at_context=args.at_context, at_recent=args.at_recent)
    print(table(reports))
    if args.section:
        command = shlex.join(["python", "-m", "bench.long_curve", *(argv or sys.argv[1:])])
        body = docs_section(reports, command=command, plot_path=args.plot, seconds=seconds)
        replace_between_markers(args.docs, f"<!-- long-curve:{args.section} -->",
                                f"<!-- /long-curve:{args.section} -->", body)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
