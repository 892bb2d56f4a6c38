"""bench/speed.py's verdicts against issue 22's targets, and its docs/benchmarks.md section."""

from __future__ import annotations

import os

import torch

SHIPPED_WITHIN = 1.15  # the shipped model's step time against the default's
BF16_SPEEDUP = 2.5  # bfloat16 steps against float32's
BF16_SHARE = 0.5  # bfloat16 steps' FLOP rate against the bfloat16 bound
GIST_SHARE = 0.85  # /gist at 64 clients against the raw batched forward
EVAL_WITHIN = 1.5  # evaluation's time against its FLOPs at the bound
RSS_WITHIN = 1.5  # training's peak RSS growth against the estimate by count


def cpu_bfloat16_flags() -> list[str]:
    """The bfloat16 instructions this CPU reports (/proc/cpuinfo), of those torch could use."""
    from pathlib import Path

    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16", "amx_tile") if flag in words]


def _verdict(target: str, value: float, met: bool, text: str) -> dict:
    return {"target": target, "value": value, "met": met, "text": text}


def bfloat16_why(bound: dict[str, float], speedup: float, device: torch.device) -> str:
    """Why bfloat16 steps are not BF16_SPEEDUP times float32's, from what this run measured."""
    ratio = bound["bfloat16"] / bound["float32"]
    rates = (
        f"the in-run bfloat16 matmul reaches {bound['bfloat16'] / 1e9:,.0f} GFLOP/s, "
        f"{ratio:.2f}x float32's {bound['float32'] / 1e9:,.0f}"
    )
    if ratio < BF16_SPEEDUP:
        units = ""
        if device.type == "cpu":
            flags = cpu_bfloat16_flags()
            units = (
                f" (the CPU reports {', '.join(flags)})"
                if flags
                else " (the CPU reports neither avx512_bf16 nor amx_bf16)"
            )
        return (
            f"{rates}: the bound itself is below {BF16_SPEEDUP}x, so no bfloat16 step can be "
            f"{BF16_SPEEDUP}x faster here{units}"
        )
    return (
        f"{rates}: the steps reach {speedup / ratio:.0%} of the speed-up their matrix "
        "products allow, the rest of the step gains less from bfloat16"
    )


def verdicts(results: dict, bound: dict[str, float], device: torch.device) -> list[dict]:
    out = []
    steps = {(r["model"], r["dtype"]): r for r in results["training"]}
    for dtype in ("float32", "bfloat16"):
        default, shipped = steps["default", dtype], steps["shipped", dtype]
        ratio = shipped["step_s"] / default["step_s"]
        counted = shipped["gflop"] / default["gflop"]
        out.append(
            _verdict(
                f"shipped model within +{SHIPPED_WITHIN - 1:.0%} of the default's step time, {dtype}",
                ratio,
                ratio <= SHIPPED_WITHIN,
                f"{shipped['step_s']:.3g} s against {default['step_s']:.3g} s, {ratio:.2f}x; its "
                f"counted FLOPs are {counted:.2f}x the default's",
            )
        )
    ev, ev_bf16 = results["evaluation"]
    speedups = {
        f"{model} model": steps[model, "float32"]["step_s"] / steps[model, "bfloat16"]["step_s"]
        for model in ("default", "shipped")
    }
    speedups["evaluation"] = ev["seconds"] / ev_bf16["seconds"]
    speedups["/gist's raw batched forward"] = results["gist_raw"]["bf16_speedup"]
    for what, speedup in speedups.items():
        text = f"bfloat16 {speedup:.2f}x as fast as float32"
        met = speedup >= BF16_SPEEDUP
        out.append(
            _verdict(
                f"{what}: bfloat16 at least {BF16_SPEEDUP}x float32's speed",
                speedup,
                met,
                text if met else f"{text}; {bfloat16_why(bound, speedup, device)}",
            )
        )
    bf16 = steps["shipped", "bfloat16"]
    out.append(
        _verdict(
            f"shipped model's bfloat16 steps at least {BF16_SHARE:.0%} of the bfloat16 bound",
            bf16["of_bound"],
            bf16["of_bound"] >= BF16_SHARE,
            f"{bf16['gflop_per_s']:,.1f} GFLOP/s against {bound['bfloat16'] / 1e9:,.1f}",
        )
    )
    top = results["gist_http"][-1]
    out.append(
        _verdict(
            f"/gist at {top['clients']} clients at least {GIST_SHARE:.0%} of the raw batched forward",
            top["of_raw"],
            top["of_raw"] >= GIST_SHARE,
            f"{top['blocks_per_s']:,.1f} blocks/s against {results['gist_raw']['raw_blocks_per_s']:,.1f}"
            f" raw: {top['of_raw']:.0%}",
        )
    )
    out.append(
        _verdict(
            f"evaluation within {EVAL_WITHIN}x of its FLOPs at the bound",
            ev["within"],
            ev["within"] <= EVAL_WITHIN,
            f"{ev['seconds']:.3g} s for {ev['examples']} examples, {ev['within']:.2f}x the time "
            f"its FLOPs take at the bound ({ev['of_bound']:.0%} of it)",
        )
    )
    mem = results["memory"]
    out.append(
        _verdict(
            f"training's peak memory ({mem['measured']}) within {RSS_WITHIN}x of "
            "gistnet.memory's estimate",
            mem["growth_of_estimate"],
            mem["growth_of_estimate"] <= RSS_WITHIN,
            f"{mem['growth_mib']:,.0f} MiB grown against {mem['estimate_mib']:,.0f} MiB estimated: "
            f"{mem['growth_of_estimate']:.2f}x",
        )
    )
    off, on = results["checkpointing"]
    saved = off["growth_mib"] / on["growth_mib"]
    cost = on["step_s"] / off["step_s"]
    out.append(
        _verdict(
            f"activation checkpointing at a {on['window']:,}-token window saves memory",
            saved,
            saved > 1,
            f"peak growth {on['growth_mib']:,.0f} MiB against {off['growth_mib']:,.0f} without "
            f"({saved:.2f}x less), a step {cost:.2f}x as long",
        )
    )
    fused, unfused = results["horizon_loss"]
    less = unfused["kept_mib"] / fused["kept_mib"]
    out.append(
        _verdict(
            f"fused horizon loss keeps less for backward at a {fused['vocab']:,} vocabulary",
            less,
            less > 1,
            f"{fused['kept_mib']:,.1f} MiB kept ({fused['beyond_inputs_mib']:,.2f} beyond its "
            f"inputs) against {unfused['kept_mib']:,.1f} ({unfused['beyond_inputs_mib']:,.1f})",
        )
    )
    return out


def _of(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 else f"{value:.2%}"


def report(results: dict, *, command: str, loads: tuple[float, float], teacher: str) -> str:
    """The docs/benchmarks.md section: the run, the bound, each path's share of it, memory,
    the large shapes where they ran, and the verdicts."""
    from bench.gist_load import load_table
    from bench.report import machine, table

    busy = loads[0] > 0.5 * (os.cpu_count() or 1)
    gist = results["gist_raw"]
    lines = [
        "## Speed against the in-run bound (`bench/speed.py`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; 1-minute load average {loads[0]:.1f} before the run, "
        f"{loads[1]:.1f} after"
        + (" (the cores were not idle: other jobs slow every figure)" if busy else "")
        + ".  ",
        f"Teacher: {teacher}. FLOPs counted from the shapes (bench/flops.py); each path's "
        "share is of the bound of its dtype, measured in this run.",
        "",
        "### The bound",
        "",
        bound_table(results["bound"]),
        "",
        "### Hot paths",
        "",
        table(
            ["path", "dtype", "batch", "time", "rate", "GFLOP each", "GFLOP/s", "of bound"],
            training_rows(results["training"]) + serving_rows(results),
        ),
        "",
        f"POST /gist through the server ({gist['threads']} torch threads in the server and in "
        f"the raw forward alike, {gist['blocks_per_request']} blocks a request):",
        "",
        load_table(
            {r["clients"]: r for r in results["gist_http"]},
            gist["raw_blocks_per_s"],
            gist["blocks_per_request"],
        ),
        "",
        "### Memory",
        "",
        memory_table(results["memory"], results["checkpointing"]),
        "",
        loss_table(results["horizon_loss"]),
    ]
    if "large" in results:
        lines += ["", "### Large random shapes, bfloat16", "", large_table(results["large"])]
    lines += ["", "### Verdicts", ""]
    for v in results["verdicts"]:
        lines.append(f"- {v['target']}: **{'met' if v['met'] else 'NOT met'}** ({v['text']}).")
    return "\n".join(lines)


def bound_table(b: dict) -> str:
    from bench.report import table

    side = f"{b['n']}²"
    rows = [
        ["float32", side, b["threads"], f"{b['float32_gflop_per_s']:,.1f}"],
        ["bfloat16", side, b["threads"], f"{b['bfloat16_gflop_per_s']:,.1f}"],
        ["float32, /gist's threads", side, b["gist_threads"], f"{b['gist_gflop_per_s']:,.1f}"],
    ]
    return table(["dtype", "matrices", "threads", "GFLOP/s"], rows)


def training_rows(training: list[dict]) -> list[list]:
    rows = []
    for r in training:
        time = f"{r['step_s']:.3g} s a step"
        if "compile_s" in r:
            time += f" (first {r['first_step_s']:.3g} s: {r['compile_s']:.3g} s compiling)"
        rows.append(
            [
                f"training, {r['model']} model",
                r["dtype"],
                r["batch"],
                time,
                f"{r['examples_per_s']:,.2f} examples/s",
                f"{r['gflop'] / r['batch']:,.3g} an example",
                f"{r['gflop_per_s']:,.1f}",
                _of(r["of_bound"]),
            ]
        )
    return rows


def serving_rows(results: dict) -> list[list]:
    """Evaluation, /gist's raw forward and preparation."""
    g = results["gist_raw"]
    per_block = g["gflop_per_block"]
    one_block = 1000 / g["one_block_ms"]
    rows = [
        [
            "evaluation, 5 conditions",
            ev["dtype"],
            ev["examples"],
            f"{ev['seconds']:.3g} s",
            f"{ev['examples_per_s']:,.2f} examples/s",
            f"{ev['gflop']:,.3g} an example",
            f"{ev['gflop_per_s']:,.1f}",
            _of(ev["of_bound"]),
        ]
        for ev in results["evaluation"]
    ]
    rows += [
        [
            "/gist raw forward",
            "float32",
            g["batch"],
            f"{g['batch'] / g['raw_blocks_per_s']:.3g} s a batch",
            f"{g['raw_blocks_per_s']:,.1f} blocks/s",
            f"{per_block:,.3g} a block",
            f"{g['raw_blocks_per_s'] * per_block:,.1f}",
            _of(g["raw_of_bound"]),
        ],
        [
            "/gist raw forward",
            "bfloat16",
            g["batch"],
            f"{g['batch'] / g['raw_bf16_blocks_per_s']:.3g} s a batch",
            f"{g['raw_bf16_blocks_per_s']:,.1f} blocks/s",
            f"{per_block:,.3g} a block",
            f"{g['raw_bf16_blocks_per_s'] * per_block:,.1f}",
            "",
        ],
        [
            "/gist raw forward, one block",
            "float32",
            1,
            f"{g['one_block_ms']:,.1f} ms",
            f"{one_block:,.1f} blocks/s",
            f"{per_block:,.3g} a block",
            f"{one_block * per_block:,.1f}",
            _of(g["one_block_of_bound"]),
        ],
    ]
    for p in results["preparation"]:
        cached = p["states"] == "cache"
        rows.append(
            [
                f"preparation, {'cached states' if cached else 'token-only'}",
                "float32" if cached else "",
                f"{p['examples']:,} windows",
                f"{p['seconds']:.3g} s ({p['wall_s']:.3g} s with loading)",
                f"{p['tokens_per_s']:,.0f} tokens/s",
                "a block's forward a window" if cached else "",
                f"{p['gflop_per_s']:,.1f}" if cached else "",
                _of(p["of_bound"]) if cached else "",
            ]
        )
    return rows


def memory_table(training: dict, checkpointing: list[dict]) -> str:
    from bench.report import table

    rows = []
    for name, m in (
        ("training, shipped model", training),
        *((f"checkpointing {'on' if m['checkpointing'] else 'off'}", m) for m in checkpointing),
    ):
        rows.append(
            [
                name,
                f"{m['window']:,}",
                m["batch"],
                f"{m['rss_before_mib']:,.0f}",
                f"{m['rss_loaded_mib']:,.0f}",
                f"{m['peak_mib']:,.0f}",
                f"{m['growth_mib']:,.0f} ({m['measured']})",
                f"{m['estimate_mib']:,.0f}",
                f"{m['growth_of_estimate']:.2f}x",
                f"{m['step_s']:.3g}",
            ]
        )
    headers = ["run", "window", "batch", "RSS before loading MiB", "after loading"]
    headers += ["peak over the steps", "growth", "gistnet.memory's estimate"]
    headers += ["growth / estimate", "s a step"]
    return table(headers, rows)


def loss_table(rows: list[dict]) -> str:
    from bench.report import table

    headers = ["horizon loss, bfloat16 logits", "rows x vocabulary", "kept for backward MiB"]
    headers += ["beyond its inputs", "forward + backward ms"]
    cells = [
        [
            r["formula"],
            f"{r['rows']} x {r['vocab']:,}",
            f"{r['kept_mib']:,.1f}",
            f"{r['beyond_inputs_mib']:,.2f}",
            f"{r['ms']:,.0f}",
        ]
        for r in rows
    ]
    return table(headers, cells)


def large_table(rows: list[dict]) -> str:
    from bench.report import table

    headers = ["shape", "parameters", "batch", "s a step", "examples/s", "TFLOP a step"]
    headers += ["TFLOP/s", "MFU (published peak)", "of measured bf16 matmul", "compile s"]
    cells = [
        [
            r["shape"],
            f"{r['parameters_b']:.2f}B",
            r["batch"],
            f"{r['step_s']:.3g}",
            f"{r['examples_per_s']:,.1f}",
            f"{r['tflop']:,.3g}",
            f"{r['tflop_per_s']:,.3g}",
            _of(r["mfu_published"]) if "mfu_published" in r else "no published peak",
            _of(r["mfu_measured"]),
            f"{r['compile_s']:.1f}" if "compile_s" in r else "",
        ]
        for r in rows
    ]
    return table(headers, cells)
