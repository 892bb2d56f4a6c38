"""The CUDA paths, checked and timed against the same machine's CPU in one run.

    python -m bench.cuda_check [--device cuda:0] [--steps 200]

On a machine with a GPU this runs, on the sample teacher:

1. preparation with the teacher in bfloat16 and in float32 on the GPU (`prepare_dataset`
   with `teacher_device` and `teacher_dtype`), against float32 on the CPU: tokens/s, and
   how far the bf16 states are from the float32 ones;
2. substitution training (`train_gistnet`, `gistnet_substitution.yaml`) on the bf16 and
   on the float32 dataset on the GPU, and on the float32 one on the CPU: steps/s, first
   and last loss;
3. the evaluation of one checkpoint on the GPU and on the CPU: seconds, and the GR each
   gives (they should agree to rounding);
4. the gist encoder (what `POST /gist` runs) on the GPU and on the CPU: blocks/s, and the
   largest difference between their gists.

Each path runs once, after an untimed warm-up on the GPU. It writes the figures to
docs/benchmarks.md (section `cuda`) and prints them as JSON.
Without a GPU it says so and exits 1; `--device cpu` is a dry run of the script itself,
which prints the section and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import machine, table, write_section

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples"


def prepare(device: str, dtype: str, out: Path) -> dict:
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    splits = {
        name: {"source": str(SAMPLE / "sample_text" / f"{name}.jsonl")}
        for name in ("train", "validation")
    }
    config = validate_dataset_config(
        {
            "dataset_name": f"cuda_check_{dtype}",
            "tokenizer": str(SAMPLE / "teacher"),
            "teacher_model": str(SAMPLE / "teacher"),
            "teacher_batch_size": 256,
            "teacher_dtype": dtype,
            "teacher_device": device,
            "splits": splits,
        }
    )
    started = time.perf_counter()
    metadata = prepare_dataset(config, output_dir=out)
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in metadata["splits"].values())
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds)}


def train(dataset: Path, device: str, steps: int, out: Path) -> dict:
    from gistnet.config import load_run_config
    from gistnet.train import train_gistnet
    from gistnet.train_request import TrainRequest, TrainSettings

    run = load_run_config(ROOT / "configs/runs/gistnet_substitution.yaml")
    training = run.training.model_copy(
        update={"device": device, "max_steps": steps, "eval_every": 10**9}
    )
    run = run.model_copy(update={"training": training})
    result = train_gistnet(
        TrainRequest(
            dataset=dataset / "train.arrow", output_dir=out, settings=TrainSettings(run=run)
        )
    )
    losses = [h["loss"] for h in result.history]
    return {
        "checkpoint": str(result.checkpoint_path),
        "seconds": round(result.seconds, 2),
        "steps_per_s": round(steps / result.seconds, 2),
        "first_loss": round(losses[0], 4),
        "last_loss": round(float(np.mean(losses[-20:])), 4),
    }


def evaluate(checkpoint: str, dataset: Path, device: str, examples: int) -> dict:
    from gistnet.eval.request import EvalRequest, EvalSettings
    from gistnet.eval.run import evaluate_gistnet

    started = time.perf_counter()
    settings = EvalSettings(max_examples=examples, bootstrap_samples=200)
    report = evaluate_gistnet(
        EvalRequest(
            checkpoint=checkpoint,
            dataset=dataset,
            split="validation",
            settings=settings,
            device=device,
        )
    )
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "gr_gist": round(report["conditions"]["gist"]["gap_recovered"]["value"], 4),
        "nll_full": round(report["conditions"]["full"]["nll"]["value"], 4),
    }


def encode(checkpoint: str, device: str, ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
    from gistnet.inference import GistEncoder

    encoder = GistEncoder.from_checkpoint(checkpoint, device=device)
    encoder.encode(ids[:64])  # warm-up: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    gists = torch.cat([encoder.encode(ids[i : i + 256]) for i in range(0, len(ids), 256)])
    seconds = time.perf_counter() - started
    return {"blocks_per_s": round(len(ids) / seconds)}, gists


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--examples", type=int, default=512, help="validation examples scored")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print("no CUDA device: this script checks the GPU paths (--device cpu: a dry run)")
        return 1
    gpu, cpu = args.device, "cpu"
    load_before = os.getloadavg()[0]
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {
            ("bf16", gpu): tmp / "bf16",
            ("fp32", gpu): tmp / "fp32",
            ("fp32", cpu): tmp / "fp32_cpu",
        }
        # Warm-up, untimed: CUDA's context, the kernels' first loads and the allocator would
        # otherwise be charged to whichever path runs first.
        prepare(gpu, "bfloat16", tmp / "warmup")
        train(tmp / "warmup", gpu, 20, tmp / "warmup_run")
        for (dtype, device), folder in data.items():
            name = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
            figures[f"prepare {dtype} {device}"] = prepare(device, name, folder)
        from gistnet.shards import open_shard

        states = {
            key: open_shard(folder / "train.arrow").teacher_hidden for key, folder in data.items()
        }
        ref = np.asarray(states[("fp32", cpu)][:512])
        for key in (("bf16", gpu), ("fp32", gpu)):
            diff = np.abs(np.asarray(states[key][:512]) - ref)
            figures[f"prepare {key[0]} {key[1]}"]["max_abs_diff_vs_cpu_fp32"] = float(diff.max())
            figures[f"prepare {key[0]} {key[1]}"]["mean_abs_diff_vs_cpu_fp32"] = float(diff.mean())

        for (dtype, device), folder in data.items():
            figures[f"train {dtype} {device}"] = train(
                folder, device, args.steps, tmp / f"run_{dtype}_{device}"
            )
        checkpoint = figures[f"train fp32 {gpu}"]["checkpoint"]
        for device in (gpu, cpu):
            figures[f"evaluate {device}"] = evaluate(
                checkpoint, data[("fp32", gpu)], device, args.examples
            )
        ids = torch.from_numpy(
            np.asarray(open_shard(data[("fp32", gpu)] / "validation.arrow").input_ids[:1024])
        ).long()
        figures[f"gist {gpu}"], on_gpu = encode(checkpoint, gpu, ids)
        figures[f"gist {cpu}"], on_cpu = encode(checkpoint, cpu, ids)
        figures[f"gist {gpu}"]["max_abs_diff_vs_cpu"] = float((on_gpu - on_cpu).abs().max())
    for entry in figures.values():
        entry.pop("checkpoint", None)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))

    p = figures
    rows = [
        ["prepare (sample train + validation)", "tokens/s"]
        + [
            f"{p[f'prepare {d} {dev}']['tokens_per_s']:,}"
            for d, dev in (("fp32", cpu), ("fp32", gpu), ("bf16", gpu))
        ],
        ["substitution training, batch 64", "steps/s"]
        + [
            f"{p[f'train {d} {dev}']['steps_per_s']:.1f}"
            for d, dev in (("fp32", cpu), ("fp32", gpu), ("bf16", gpu))
        ],
        ["evaluation, 5 conditions", f"s for {args.examples} examples"]
        + [f"{p[f'evaluate {cpu}']['seconds']:.1f}", f"{p[f'evaluate {gpu}']['seconds']:.1f}", "-"],
        ["gist encoder (`POST /gist`'s forward)", "blocks/s"]
        + [f"{p[f'gist {cpu}']['blocks_per_s']:,}", f"{p[f'gist {gpu}']['blocks_per_s']:,}", "-"],
    ]
    bf16 = p[f"prepare bf16 {gpu}"]
    body = (
        "## The CUDA paths (`bench/cuda_check.py`)\n\n"
        f"Command: `python -m bench.cuda_check --device {gpu} --steps {args.steps}`  \n"
        f"Machine: {machine()}; load average {load_before:.1f} at the start. The CPU column is "
        "this same machine's CPU, in the same run.\n\n"
        + table(
            ["what", "unit", "CPU, float32", f"{gpu}, float32", f"{gpu}, bfloat16 teacher"], rows
        )
        + "\n\nChecks in the same run: training loss, first step → mean of the last 20, "
        + ", ".join(
            f"{d} {dev} {p[f'train {d} {dev}']['first_loss']:.3f} → {p[f'train {d} {dev}']['last_loss']:.3f}"
            for d, dev in (("fp32", cpu), ("fp32", gpu), ("bf16", gpu))
        )
        + f"; GR(gist) of one checkpoint scored on the GPU {p[f'evaluate {gpu}']['gr_gist']:.4f}, "
        f"on the CPU {p[f'evaluate {cpu}']['gr_gist']:.4f}; largest gist difference GPU vs CPU "
        f"{p[f'gist {gpu}']['max_abs_diff_vs_cpu']:.2e}; bf16 teacher states against float32 "
        f"CPU ones: mean |Δ| {bf16['mean_abs_diff_vs_cpu_fp32']:.3g}, max {bf16['max_abs_diff_vs_cpu_fp32']:.3g}."
        " The sample teacher is 1M parameters: on the GPU its steps are bound by kernel "
        "launches, not arithmetic, so these rates say the paths work and what a small model "
        "gets; a 1B-8B teacher's rates are set by its FLOPs.\n"
    )
    if gpu == "cpu":  # the dry run: nothing measured worth keeping
        print(body)
        return 0
    print(f"wrote {write_section('cuda', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
