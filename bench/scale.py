"""Datasets at scale: token-only against cached teacher states, and a split of 4 shards
against one, side by side on the same corpus in the same run.

    python -m bench.scale [--docs N] [--steps N] [--rss-steps N]

1. Disk and preparation: bytes per example and examples/s of `prepare_dataset` with
   `teacher_states: cache` (every block's float32 states) and `none` (token ids only), on
   the sample teacher (128 wide) and a random GPT-2 256 wide. Each preparation runs in a
   process of its own (transformers' modules imported before the clock starts) and its
   time includes loading what it loads: tokenizer and teacher weights for cache,
   tokenizer and the teacher's config for none.
2. Substitution training steps/s on each pair of datasets: cached states read from the
   shard, or taken from the full-context forward the objective runs anyway (token-only).
   Timed between the first and the last step, the two alternating, best of two each.
3. Peak RSS of training (mse, cached 256-wide states) on the train split written as one
   shard and as four, in processes of their own: the reader gathers rows across the four
   memory-mapped files, it never concatenates them.

Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.prep import SAMPLE_TEACHER, _documents, make_wide_teacher

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- children


def _warm_imports() -> None:
    """transformers imports its tokenizer and model modules on first use (seconds on a
    busy machine): done before the clock starts, for both paths alike, since it is Python
    starting up, not preparation."""
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    from gistnet.teacher import load_tokenizer

    load_tokenizer(str(SAMPLE_TEACHER))


def child_prep(args) -> dict:
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    _warm_imports()

    config = validate_dataset_config(
        {
            "dataset_name": "bench",
            "tokenizer": str(SAMPLE_TEACHER),
            "teacher_model": args.teacher,
            "teacher_batch_size": 256,
            "teacher_device": "cpu",
            "teacher_states": args.states,
            "splits": {"train": {"documents": _documents(args.docs), "shards": args.shards}},
        }
    )
    start = time.perf_counter()
    meta = prepare_dataset(config, output_dir=args.out)
    seconds = time.perf_counter() - start
    split = meta["splits"]["train"]
    return {"seconds": seconds, "examples": split["examples"], "bytes": split["bytes"]}


def child_train(args) -> dict:
    from gistnet.config import validate_run_config
    from gistnet.train import train_gistnet
    from gistnet.train_request import TrainRequest, TrainSettings

    run = validate_run_config(
        {
            "model": {"num_heads": 4},
            "training": {
                "objective": args.objective,
                "batch_size": 64,
                "device": "cpu",
                "eval_every": 10**9,
                "max_steps": args.steps,
            },
        }
    )
    ticks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as out:
        train_gistnet(
            TrainRequest(dataset=args.dataset, output_dir=out, settings=TrainSettings(run=run)),
            on_progress=lambda p: ticks.setdefault(p.step, time.perf_counter()),
        )
    # From the end of the first step to the end of the last: loading is not a step.
    return {"steps_per_s": (args.steps - 1) / (ticks[args.steps] - ticks[1])}


def child(args) -> None:
    from bench.report import peak_rss_mib

    result = child_prep(args) if args.child == "prep" else child_train(args)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def measure(*args: str) -> dict:
    cmd = [sys.executable, "-m", "bench.scale", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prep(teacher: str, states: str, docs: int, out: Path, shards: int = 1) -> dict:
    return measure(
        "--child", "prep", "--teacher", teacher, "--states", states, "--docs", str(docs),
        "--out", str(out), "--shards", str(shards),
    )  # fmt: skip


def train(dataset: Path, objective: str, steps: int) -> dict:
    return measure(
        "--child", "train", "--dataset", str(dataset), "--objective", objective,
        "--steps", str(steps),
    )  # fmt: skip


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1300, help="sample train documents")
    parser.add_argument("--steps", type=int, default=30, help="substitution steps per run")
    parser.add_argument("--rss-steps", type=int, default=200, help="mse steps per RSS run")
    parser.add_argument("--child", choices=["prep", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--states", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from bench.report import machine, table, write_section

    load_before = os.getloadavg()[0]
    disk_rows, speed_rows, rss_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teachers = {
            128: ("sample teacher, 128 wide", str(SAMPLE_TEACHER)),
            256: ("random GPT-2, 256 wide, 4 layers", make_wide_teacher(tmp / "wide")),
        }
        for width, (label, teacher) in teachers.items():
            cached = prep(teacher, "cache", args.docs, tmp / f"cache{width}")
            tokens = prep(teacher, "none", args.docs, tmp / f"none{width}")
            assert cached["examples"] == tokens["examples"], (cached, tokens)
            print(label, "prep", cached, tokens, flush=True)
            per = {k: r["bytes"] / r["examples"] for k, r in (("c", cached), ("t", tokens))}
            rate = {k: r["examples"] / r["seconds"] for k, r in (("c", cached), ("t", tokens))}
            for name, key, r in (("cache", "c", cached), ("none", "t", tokens)):
                disk_rows.append(
                    [
                        label,
                        f"`{name}`",
                        f"{r['examples']:,}",
                        f"{per[key]:,.0f}",
                        f"{r['examples'] / r['seconds']:,.0f}",
                        f"{r['peak_rss_mib']:,.0f}",
                        f"**{per['c'] / per['t']:.0f}x less**" if name == "none" else "1x",
                        f"**{rate['t'] / rate['c']:.0f}x**" if name == "none" else "1x",
                    ]
                )

            best = {"c": 0.0, "t": 0.0}
            for _ in range(2):  # alternating, so both see the same load on the machine
                for key, folder in (("c", tmp / f"cache{width}"), ("t", tmp / f"none{width}")):
                    sps = train(folder, "substitution", args.steps)["steps_per_s"]
                    best[key] = max(best[key], sps)
            print(label, "substitution steps/s", best, flush=True)
            speed_rows.append(
                [
                    label,
                    f"{best['c']:.2f}",
                    f"{best['t']:.2f}",
                    f"**{best['t'] / best['c']:.2f}**",
                ]
            )

        four = prep(teachers[256][1], "cache", args.docs, tmp / "cache256x4", shards=4)
        print("4 shards", four, flush=True)
        rss = {}
        for _ in range(2):
            for key, folder in (("1", tmp / "cache256"), ("4", tmp / "cache256x4")):
                peak = train(folder, "mse", args.rss_steps)["peak_rss_mib"]
                rss[key] = min(rss.get(key, float("inf")), peak)
        print("peak RSS", rss, flush=True)
        size = (tmp / "cache256" / "train.arrow").stat().st_size / 2**20
        for key, name in (
            ("1", "1 shard (`train.arrow`)"),
            ("4", "4 shards (`train-*-of-00004.arrow`)"),
        ):
            rss_rows.append(
                [
                    name,
                    f"{four['examples']:,}",
                    f"{size:,.0f}",
                    f"{rss[key]:,.0f}",
                    f"**{rss['4'] / rss['1']:.3f}**" if key == "4" else "1.000",
                ]
            )

    body = (
        "## Datasets at scale (`bench/scale.py`)\n\n"
        f"Command: `python -m bench.scale --docs {args.docs} --steps {args.steps} "
        f"--rss-steps {args.rss_steps}`  \n"
        f"Machine: {machine()}; 1-minute load average {load_before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after (other jobs share the cores: step rates move by tens "
        f"of percent from run to run, so read a speed ratio near 1 as 'as fast').  \n"
        "Same corpus (the sample's first "
        f"{args.docs} train stories), blocks of 32, horizon 64, CPU.\n\n"
        "**Disk and preparation**, `teacher_states: cache` (today's layout) against `none` "
        "(token ids only). Time includes loading what each loads. Targets: at least 50x less "
        "disk per example at width 256, growing with the width; at least 20x faster "
        "preparation.\n\n"
        + table(
            [
                "teacher",
                "teacher_states",
                "examples",
                "bytes/example",
                "examples/s",
                "peak RSS MiB",
                "disk vs cache",
                "speed vs cache",
            ],
            disk_rows,
        )
        + "\n\n**Substitution training**, batch 64, one GistNet layer: cached states read from "
        "the shard against states taken from the full-context forward the objective runs "
        "anyway. Target: token-only within 10% of cached.\n\n"
        + table(["teacher", "steps/s: cached", "steps/s: token-only", "ratio"], speed_rows)
        + f"\n\n**Peak RSS of training** (mse, {args.rss_steps} steps of 64, cached 256-wide "
        "states) on the same rows as one shard and as four, each run in its own process, "
        "lower of two runs. Target: four shards within 10% of one.\n\n"
        + table(["train split", "examples", "MiB on disk", "peak RSS MiB", "ratio"], rss_rows)
    )
    print(f"wrote {write_section('scale', body)}")


if __name__ == "__main__":
    main()
