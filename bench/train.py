"""Shard loading and training steps: the project's paths against plain baselines.

    python -m bench.train [--docs N] [--steps N]

Loading: `open_shard` (memory-mapped, zero-copy numpy views) against the baseline
`table.to_pylist()` turned into arrays. Training: `train_gistnet` against a plain loop
written here over tensors built from those Python lists, same model, batch and steps.
Both on a dataset prepared with the sample teacher and one with a random 256-wide GPT-2.
Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from bench.prep import SAMPLE_TEACHER, _documents, make_wide_teacher
from bench.report import machine, table, write_section


def load_project(path: Path):
    from gistnet.shards import open_shard

    shard = open_shard(path)
    return shard.teacher_hidden, shard.gist_target


def load_baseline(path: Path):
    rows = pa.ipc.open_file(str(path)).read_all().to_pylist()
    hidden = np.array([r["teacher_hidden"] for r in rows], dtype=np.float32)
    target = np.array([r["gist_target"] for r in rows], dtype=np.float32)
    return hidden, target


def timed(fn, *args, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def baseline_training(hidden: np.ndarray, target: np.ndarray, run, steps: int) -> float:
    from gistnet.model import GistNet, GistNetConfig

    cfg = run.training
    states, targets = torch.tensor(hidden), torch.tensor(target)
    torch.manual_seed(cfg.seed)
    model = GistNet(
        GistNetConfig(
            hidden_size=hidden.shape[2], block_size=hidden.shape[1], num_heads=run.model.num_heads
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(states), (cfg.batch_size,), generator=gen)
        loss = F.mse_loss(model(states[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps / (time.perf_counter() - start)


def project_training(path: Path, run, steps: int, out: Path) -> float:
    from gistnet.train import train_gistnet

    result = train_gistnet(dataset_path=path, run_config=run, output_dir=out, max_steps=steps)
    return steps / result.seconds


def main() -> None:
    from gistnet.config import validate_dataset_config, validate_run_config
    from gistnet.data import prepare_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    run = validate_run_config(
        {
            "model": {"num_heads": 4},
            "training": {"batch_size": 64, "device": "cpu", "eval_every": 10**9},
        }
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teachers = {
            "sample teacher (128 wide)": str(SAMPLE_TEACHER),
            "random GPT-2, 256 wide, 4 layers": make_wide_teacher(tmp / "wide"),
        }
        for i, (label, teacher) in enumerate(teachers.items()):
            config = validate_dataset_config(
                {
                    "dataset_name": "bench",
                    "tokenizer": str(SAMPLE_TEACHER),
                    "teacher_model": teacher,
                    "teacher_batch_size": 256,
                    "teacher_device": "cpu",
                    "splits": {"train": {"documents": _documents(args.docs)}},
                }
            )
            out = tmp / f"data{i}"
            prepare_dataset(config, output_dir=out)
            shard = out / "train.arrow"
            n = pa.ipc.open_file(str(shard)).read_all().num_rows
            t_project = timed(load_project, shard, repeat=3)
            t_baseline = timed(load_baseline, shard)
            hidden, target = load_baseline(shard)
            sps_base = baseline_training(hidden, target, run, args.steps)
            sps_proj = project_training(shard, run, args.steps, tmp / f"run{i}")
            print(label, n, t_project, t_baseline, sps_base, sps_proj, flush=True)
            rows.append(
                [
                    label,
                    f"{n:,}",
                    f"{t_baseline * 1e3:,.0f} ms",
                    f"{t_project * 1e3:,.2f} ms",
                    f"**{t_baseline / t_project:,.0f}x**",
                    f"{sps_base:,.1f}",
                    f"{sps_proj:,.1f}",
                    f"**{sps_proj / sps_base:.2f}x**",
                ]
            )
    body = (
        "## Shard loading and training steps (`bench/train.py`)\n\n"
        f"Command: `python -m bench.train --docs {args.docs} --steps {args.steps}`  \n"
        f"Machine: {machine()}  \n"
        "Targets: loading at least 50x faster than `to_pylist`; training steps/s at least the "
        "baseline's (batch 64, one GistNet layer, mse).\n\n"
        + table(
            [
                "dataset",
                "examples",
                "load: to_pylist",
                "load: open_shard",
                "load speed-up",
                "steps/s: baseline loop",
                "steps/s: train_gistnet",
                "ratio",
            ],
            rows,
        )
    )
    print(f"wrote {write_section('train', body)}")


if __name__ == "__main__":
    main()
