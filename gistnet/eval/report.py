"""A report for people: the plain-text table, the per-position NLL plot, and the JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gistnet.eval.conditions import VECTORS
from gistnet.files import atomic_write


def _fmt(entry: Mapping | None, digits: int = 3) -> str:
    if entry is None or entry["value"] is None:
        return "n/a"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci95") and entry["ci95"][0] is not None:
        low, high = entry["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _condition_table(report: Mapping[str, Any]) -> list[str]:
    early = report["early_tokens"]
    header = [
        "condition",
        "NLL",
        "ΔNLL [95% CI]",
        "GR [95% CI]",
        "GR from token 2",
        f"GR tokens {early + 1}+",
        f"ΔNLL first {early}",
        "ΔNLL rest",
    ]
    rows = [header]
    for name, entry in report["conditions"].items():
        rows.append(
            [
                name,
                _fmt(entry["nll"]),
                _fmt(entry["delta_nll"]),
                _fmt(entry["gap_recovered"]),
                _fmt(entry.get("gap_recovered_from_2")),
                _fmt(entry.get("gap_recovered_rest")),
                _fmt(entry["delta_nll_early"]),
                _fmt(entry["delta_nll_late"]),
            ]
        )
    return _aligned(rows)


def _resampling_note(report: Mapping[str, Any]) -> str:
    if report.get("resampling") == "documents":
        return (
            f"{report['bootstrap_samples']} bootstrap resamples of the "
            f"{report['n_documents']} documents (cluster bootstrap over doc_id)"
        )
    return f"{report['bootstrap_samples']} bootstrap resamples of the examples"


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _long_table(report: Mapping[str, Any]) -> str:
    """The long-document report: per condition its NLL, GR_long and cost, then the bars."""
    rows = [["condition", "NLL [95% CI]", "GR_long [95% CI]", "positions", "prefill FLOPs",
             "KV cache"]]  # fmt: skip
    for name, entry in report["conditions"].items():
        rows.append(
            [
                name,
                _fmt(entry["nll"]),
                _fmt(entry.get("gap_recovered_long")),
                str(entry["positions"]),
                f"{entry['prefill_flops']:.3g}",
                f"{entry['kv_cache_bytes'] / 2**20:.2f} MiB",
            ]
        )
    comparisons = report["comparisons"]
    lines = [
        *_aligned(rows),
        "",
        f"{report['n_examples']} windows: {report['context_tokens']} context tokens "
        f"({report['compressed_blocks']} blocks compressed, {report['recent_tokens']} kept raw: "
        f"{report['compressed_positions']} positions), {report['score_tokens']} scored; "
        f"{_resampling_note(report)}",
        f"GR_long(compressed) - GR_long(mean): "
        f"{_fmt(comparisons['compressed_minus_mean_gap_recovered_long'])}",
        f"NLL(mean) - NLL(compressed): {_fmt(comparisons['mean_minus_compressed_nll'])}",
        "quality bars: "
        + ", ".join(
            f"{name} {'yes' if ok else 'NO' if ok is False else 'n/a'}"
            for name, ok in report["quality_bars"].items()
        ),
    ]
    return "\n".join(lines)


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of the report: one row per condition, then the comparisons."""
    if report.get("mode") == "long":
        return _long_table(report)
    lines = _condition_table(report)
    lines.append("")
    lines.append(
        f"{report['n_examples']} examples, {report['horizon_tokens']} horizon tokens each; "
        f"{_resampling_note(report)}"
    )
    refine = report.get("refine")
    if refine is not None:
        lines.append(
            f"refined: each gist refined from the block alone, {refine['samples']} continuations "
            f"of {refine['tokens']} tokens sampled by the teacher (temperature "
            f"{refine['temperature']}, seed {refine['seed']}), {refine['steps']} Adam steps "
            f"(lr {refine['lr']}); {refine['seconds']} s"
        )
    comparisons = report.get("comparisons", {})
    for key, label in (
        ("gist_minus_mean_gap_recovered", "GR(gist) - GR(mean)"),
        ("swapped_over_gist_gap_recovered", "GR(swapped) / GR(gist)"),
        ("refined_minus_mean_gap_recovered", "GR(refined) - GR(mean)"),
        ("swapped_refined_over_refined_gap_recovered", "GR(swapped_refined) / GR(refined)"),
    ):
        if key in comparisons:
            lines.append(f"{label}: {_fmt(comparisons[key])}")
    oracle = report.get("oracle")
    if oracle is not None:
        search = oracle["search"]
        lines += [
            "",
            f"oracle: free vectors fitted per example on {oracle['n_examples']} examples "
            f"(Adam lr {search['lr']}, from the gist, at most {search['max_steps']} steps, "
            f"stopped on a KL plateau; {search['seconds']} s)",
            *_condition_table(oracle),
        ]
        for vector, _ in VECTORS:
            share = oracle["comparisons"].get(f"{vector}_over_oracle_gap_recovered")
            if share is not None:
                lines.append(f"GR({vector}) / GR(oracle): {_fmt(share)}")
    bars = report.get("quality_bars") or {}
    if bars:
        lines.append(
            "quality bars: "
            + ", ".join(
                f"{name} {'yes' if ok else 'NO' if ok is False else 'n/a'}"
                for name, ok in bars.items()
            )
        )
    return "\n".join(lines)


def plot_per_position(report: Mapping[str, Any], path: str | Path, *, title: str | None = None):
    """Mean NLL at each horizon position, one line per condition, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    long = report.get("mode") == "long"
    for name, entry in report["conditions"].items():
        curve = entry["nll_per_position"]
        gr = (entry.get("gap_recovered_long") if long else entry["gap_recovered"]) or {}
        gr = gr.get("value")
        label = name if gr is None or name in ("full", "drop") else f"{name} (GR {gr:.2f})"
        ax.plot(range(1, len(curve) + 1), curve, label=label, linewidth=1.5)
    if long:
        ax.set_xlabel("scored position (tokens after the context)")
    else:
        early = report["early_tokens"]
        if early < report["horizon_tokens"]:
            ax.axvline(early + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("horizon position (tokens after the block)")
    # Log scale: the first tokens after the block cost ten times the later ones.
    ax.set_yscale("log")
    ax.set_ylabel("mean NLL (nats, log scale)")
    ax.set_title(title or f"per-position NLL, {report['n_examples']} examples")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # The temporary's name ends in .tmp: the format is the final name's.
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or None)
    plt.close(fig)
    return Path(path)


def write_report(
    report: Mapping[str, Any], out_dir: str | Path, *, stem: str = "evaluation"
) -> dict[str, Path]:
    """Write `<stem>.json` and `<stem>_nll_per_position.png` under out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    with atomic_write(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    plot_path = plot_per_position(report, out_dir / f"{stem}_nll_per_position.png")
    return {"json": json_path, "plot": plot_path}
