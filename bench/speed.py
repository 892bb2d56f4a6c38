"""Each hot path on a real teacher, as a share of the matrix-multiply rate measured in the
same run.

    python -m bench.speed [--teacher DIR] [--checkpoint PT] [--device cpu|cuda:0] [--smoke]
                          [--compile] [--no-write] [--section NAME] [--json PATH]

One process, one run. First the bound: the rate `F.linear` reaches on square matrices
(2048 on a CPU, 8192 on a GPU) in float32 and bfloat16, best of a few. Then, on the
teacher (SmolLM2-135M from models/, which scripts/teacher.sh makes), each path timed and
its FLOPs counted from the shapes (bench/flops.py), as a fraction of the bound of its dtype:

- substitution training steps through the trainer's own pieces (`gistnet.train`'s
  `_open_run` and `_train_step`) on a token-only dataset of Python tutorial pages, for the
  default GistNet and the model of configs/runs/smollm2_substitution.yaml, with
  `training.teacher_dtype` float32 and bfloat16;
- an evaluation pass (`gistnet.eval.conditions.evaluate_conditions`, five conditions);
- /gist's raw batched forward (`GistEncoder.encode` on 64 blocks, and one block's
  latency), and POST /gist through the real server at 1, 8 and 64 clients
  (`bench.gist_load.GistServer`), serving the shipped model (untrained: speed does not
  depend on the weights) unless --checkpoint names one;
- preparation of a few tutorial pages, token-only and with cached states (tokens/s).

Memory (bench/speed_memory.py), in a spawned child process: the peak RSS of two shipped
training steps against `gistnet.memory.training_memory`'s estimate, and the same at a
1,024-token window with `training.activation_checkpointing` off and on (time a step,
peak growth). In this process: the bytes autograd keeps for the substitution loss's
backward at a 128k vocabulary, fused (`gistnet.horizon_loss.horizon_kl_nll`) against the
unfused formula.

On a GPU (and, at tiny shapes, in --smoke so the code runs; bench/speed_large.py): random
Llama shapes of about 1B and 8B parameters in bfloat16, built from their configs (no download), training
examples/s and MFU against the GPU's published dense bfloat16 peak and the measured
matmul rate. `--compile` runs the teacher's layers and GistNet through torch.compile and
reports the compile time. `--smoke` runs all of it in seconds on a tiny random Llama and
writes nothing but its --json. The section goes to docs/benchmarks.md (bench:speed, or
bench:speed_gpu on a GPU), with the verdicts against the targets (bench/speed_report.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import flops
from bench.speed_large import LARGE_SHAPES, large_shape_training
from bench.speed_memory import MemoryChild, horizon_loss_memory
from bench.speed_report import report, verdicts
from bench.trainer_steps import open_run, step_times, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = ROOT / "models" / "smollm2-135m"
SHIPPED_RUN = ROOT / "configs" / "runs" / "smollm2_substitution.yaml"
SAMPLE_TEACHER = ROOT / "samples" / "teacher"  # the tiny Llama's tokenizer
PAGES = "/usr/share/doc/python3/html/tutorial/*.html"  # read in order, up to a token cap


TINY_LLAMA = {
    "hidden_size": 72, "intermediate_size": 144, "num_hidden_layers": 2,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does."""

    matmul: int  # side of the bound's square matrices
    repeats: int  # of each matmul, the best kept
    data_tokens: int  # of the tutorial pages, for the training datasets
    prep_tokens: int  # of them, for the preparation figures
    steps: int  # timed training steps, after one untimed
    train_batch: int | None  # None: the shipped run config's
    eval_examples: int
    gist_seconds: float  # raw forward, each batch size
    http_seconds: float  # each concurrency level
    warmup_seconds: float  # the server's warm-up
    long_window: int  # tokens of the activation-checkpointing window
    long_batch: int
    loss_rows: tuple[int, int]  # (batch, horizon tokens) of the fused-loss comparison
    loss_vocab: int  # Llama 3's
    large_batches: tuple[int, ...]  # per large shape

    @classmethod
    def of(cls, *, smoke: bool, cuda: bool) -> Sizes:
        """The full run's on a CPU or a GPU, or --smoke's: seconds on a CPU."""
        full = cls(
            matmul=2048,
            repeats=5,
            data_tokens=1 << 16,
            prep_tokens=8192,
            steps=6,
            train_batch=None,
            eval_examples=32,
            gist_seconds=10,
            # A batch of 64 SmolLM2 blocks takes seconds on 2 cores: each level sees ~10.
            http_seconds=30,
            warmup_seconds=2,
            long_window=1024,
            long_batch=2,
            loss_rows=(2, 32),
            loss_vocab=128256,
            large_batches=(),
        )
        if smoke:
            return replace(
                full,
                matmul=256,
                repeats=10,
                data_tokens=4096,
                prep_tokens=2048,
                steps=1,
                train_batch=2,
                eval_examples=4,
                gist_seconds=0.2,
                http_seconds=0.3,
                warmup_seconds=0.3,
                long_window=256,
                long_batch=1,
                loss_rows=(1, 4),
                large_batches=(2,),
            )
        if cuda:
            return replace(
                full,
                matmul=8192,
                repeats=5,
                data_tokens=1 << 17,
                prep_tokens=1 << 16,
                steps=5,
                train_batch=64,
                eval_examples=256,
                gist_seconds=5,
                http_seconds=10,
                warmup_seconds=3,
                long_batch=8,
                loss_rows=(8, 32),
                large_batches=(64, 32),
            )
        return full


STARTED = time.perf_counter()


def log(what: str, figures: Any = None) -> None:
    """A progress line on stderr, with the seconds since the start."""
    tail = "" if figures is None else f": {json.dumps(figures)}"
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {what}{tail}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the bound


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """FLOP/s of F.linear on (n, n) matrices: the best of `repeats` after one warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    w = torch.randn(n, n, device=device).to(dtype)
    F.linear(a, w)
    best = min(timed(lambda: F.linear(a, w), device) for _ in range(repeats))
    return flops.matmul_flops(n) / best


# --------------------------------------------------------------------------- setup


def make_tiny_llama(folder: Path) -> Path:
    """A random 2-layer Llama with the sample teacher's tokenizer, saved as a teacher."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(SAMPLE_TEACHER)
    torch.manual_seed(0)
    config = LlamaConfig(
        **TINY_LLAMA,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prepare_pages(
    teacher: Path, out: Path, *, states: str, horizon: int, tokens: int, device: str
) -> dict:
    """The tutorial pages through `prepare_dataset`: token-only or with cached states."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    config = validate_dataset_config(
        {
            "dataset_name": f"speed_{states}_{horizon}",
            "tokenizer": str(teacher),
            "teacher_model": str(teacher),
            "block_size": 32,
            "horizon": horizon,
            "teacher_states": states,
            "teacher_batch_size": 64,
            "teacher_device": device,
            "splits": {"train": {"source": PAGES, "max_tokens": tokens}},
        }
    )
    started = time.perf_counter()
    metadata = prepare_dataset(config, output_dir=out)
    return {**metadata["splits"]["train"], "wall_s": time.perf_counter() - started}


def run_configs(device: str, batch: int | None) -> dict[str, dict]:
    """The run configs timed: the shipped SmolLM2 file, and its training section with
    GistNet's default model."""
    from gistnet.config import read_run_yaml

    shipped, _log_every = read_run_yaml(SHIPPED_RUN)
    training = {**shipped["training"], "device": device, "eval_every": 10**9}
    if batch is not None:
        training["batch_size"] = batch
    shipped = {**shipped, "training": training}
    default = {"training": {**training, "objective": "substitution"}}
    return {"default": default, "shipped": shipped}


def with_training(config: dict, **changes: Any) -> dict:
    return {**config, "training": {**config["training"], **changes}}


# --------------------------------------------------------------------------- training


def compile_run(run) -> None:
    """torch.compile each of the teacher's decoder layers and GistNet, in place, as
    `training.compile` does."""
    from gistnet.teacher import compile_for_training

    compile_for_training(run.objective.teacher, run.model, backend="inductor", mode=None)


def train_figures(run, times: list[float], bound: dict[str, float], *, compiled: bool) -> dict:
    from gistnet.memory import TeacherShape

    shape = TeacherShape.from_hf_config(run.objective.teacher.config)
    batch = run.cfg.batch_size
    counted = flops.substitution_step(
        shape,
        run.model.config,
        horizon=int(run.metadata["horizon"]),
        batch=batch,
        reconstruct=run.cfg.reconstruct_weight > 0,
    )
    step_s = statistics.median(times[1:])
    dtype = run.objective.teacher_dtype
    figures = {
        "dtype": dtype,
        "batch": batch,
        "step_s": step_s,
        "first_step_s": times[0],
        "examples_per_s": batch / step_s,
        "gflop": counted["total"] / 1e9,
        "gflop_per_s": counted["total"] / step_s / 1e9,
        "of_bound": counted["total"] / step_s / bound[dtype],
    }
    if compiled:
        figures["compile_s"] = max(times[0] - step_s, 1e-9)
    return figures


def time_training(dataset: Path, config: dict, out: Path, sizes: Sizes, bound, *, compiled: bool):
    """(figures, the run) of `sizes.steps` timed steps of `config`, after one untimed."""
    from gistnet.train import _train_step

    _request, run = open_run(dataset, config, out)
    if compiled:
        compile_run(run)
    times = step_times(lambda i: _train_step(run, i), sizes.steps, run.device)
    return train_figures(run, times, bound, compiled=compiled), run


def save_run(request, run, *, steps: int) -> Path:
    """The run's GistNet as the trainer saves it (a checkpoint /gist serves)."""
    from gistnet.train import TrainResult, _save_trained

    result = TrainResult(request.output_dir / "gistnet.pt", steps, 0.0, 0.0, None, 0.0)
    _save_trained(request, run, result)
    return result.checkpoint_path


# --------------------------------------------------------------------------- evaluation


def time_evaluation(run, sizes: Sizes, bound: dict[str, float]) -> dict:
    """evaluate_conditions on the first examples: full, gist, drop, mean and swapped."""
    from gistnet.eval.conditions import evaluate_conditions
    from gistnet.memory import TeacherShape
    from gistnet.teacher import gistnet_inputs

    teacher, config = run.objective.teacher, run.model.config
    n = min(sizes.eval_examples, run.data.num_examples)
    contexts = np.asarray(run.data.context_input_ids[np.arange(n)])
    blocks = torch.from_numpy(contexts[:, : config.block_size].astype(np.int64))
    run.model.eval()
    with torch.inference_mode():
        gists = run.model(**gistnet_inputs(teacher, blocks, config)).float().cpu()
    run.model.train()
    partners = np.roll(np.arange(n), 1)

    def evaluate(rows: int):
        evaluate_conditions(
            teacher,
            contexts[:rows],
            block_size=config.block_size,
            gist_vectors=gists[:rows],
            swap_partner=partners[:rows] % rows,
            batch_size=64,
            bos_sink=config.bos_sink,
        )

    evaluate(min(n, 2))  # warm-up
    seconds = timed(lambda: evaluate(n), run.device)
    shape = TeacherShape.from_hf_config(teacher.config)
    horizon = contexts.shape[1]
    counted = n * flops.evaluation_flops(shape, config, horizon=horizon, conditions=3)
    return {
        "dtype": run.objective.teacher_dtype,
        "examples": n,
        "seconds": seconds,
        "examples_per_s": n / seconds,
        "gflop": counted / n / 1e9,
        "gflop_per_s": counted / seconds / 1e9,
        "of_bound": counted / seconds / bound[run.objective.teacher_dtype],
        "within": seconds / (counted / bound[run.objective.teacher_dtype]),
    }


# --------------------------------------------------------------------------- /gist


def gist_threads(device: torch.device) -> int:
    """Torch threads of /gist, server and raw forward alike: all cores but one on a CPU,
    the one left to the event loop and the load generator (bench.gist_load's reason)."""
    return 0 if device.type == "cuda" else max(1, (os.cpu_count() or 2) - 1)


def gist_settings(sizes: Sizes, device: torch.device):
    from bench.gist_load import LoadSettings

    return LoadSettings(
        seconds=sizes.http_seconds,
        device=str(device),
        threads=gist_threads(device),
        warmup_seconds=sizes.warmup_seconds,
    )


def time_gist(checkpoint: Path, server, sizes: Sizes, device, rate: float):
    """(raw, http): the raw forward (`GistEncoder.encode`) at a full batch and at one
    block, with the server idle, then POST /gist through `server` (a started
    `bench.gist_load.GistServer`) at each concurrency level, at /gist's threads alike;
    `rate` is the float32 bound at those threads."""
    from bench.gist_load import encoded_blocks_per_s
    from gistnet.inference import GistEncoder
    from gistnet.memory import TeacherShape

    settings, own_threads = server.settings, torch.get_num_threads()
    encoder = GistEncoder.from_checkpoint(checkpoint, device=device)
    config, vocab = encoder.model.config, encoder.vocab_size
    per_block = flops.gist_flops(TeacherShape.from_hf_config(encoder.teacher.config), config)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        raw = {
            batch: encoded_blocks_per_s(
                encoder, batch=batch, seconds=sizes.gist_seconds, vocab=vocab
            )
            for batch in (settings.max_batch, 1)
        }
    finally:
        torch.set_num_threads(own_threads)
    del encoder
    gc.collect()
    # The same batches with the teacher in bfloat16 (GistNet stays float32).
    encoder = GistEncoder.from_checkpoint(checkpoint, device=device, teacher_dtype="bfloat16")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        bf16 = encoded_blocks_per_s(
            encoder, batch=settings.max_batch, seconds=sizes.gist_seconds, vocab=vocab
        )
    finally:
        torch.set_num_threads(own_threads)
    del encoder
    gc.collect()
    batched = raw[settings.max_batch]
    figures = {
        "threads": settings.threads or own_threads,
        "batch": settings.max_batch,
        "blocks_per_request": settings.blocks_per_request,
        "gflop_per_block": per_block / 1e9,
        "raw_blocks_per_s": batched,
        "raw_of_bound": batched * per_block / rate,
        "one_block_ms": 1000 / raw[1],
        "one_block_of_bound": raw[1] * per_block / rate,
        "raw_bf16_blocks_per_s": bf16,
        "bf16_speedup": bf16 / batched,
    }
    http = []
    for clients, r in server.drive_levels(vocab=vocab, block_size=config.block_size).items():
        blocks = r["requests_per_s"] * settings.blocks_per_request
        http.append({"clients": clients, **r, "blocks_per_s": blocks, "of_raw": blocks / batched})
    log("/gist", {"raw": figures, "http": http})
    return figures, http


# --------------------------------------------------------------------------- preparation


def time_preparation(teacher: Path, out: Path, sizes: Sizes, device, bound) -> list[dict]:
    from gistnet.memory import TeacherShape
    from gistnet.teacher import load_teacher_config

    shape = TeacherShape.from_hf_config(load_teacher_config(str(teacher)))
    rows = []
    for states in ("none", "cache"):
        split = prepare_pages(
            teacher,
            out / states,
            states=states,
            horizon=64,
            tokens=sizes.prep_tokens,
            device=str(device),
        )
        row = {
            "states": states,
            "tokens": split["tokens"],
            "examples": split["examples"],
            "seconds": split["seconds"],
            "wall_s": split["wall_s"],
            "tokens_per_s": split["tokens"] / split["seconds"],
        }
        if states == "cache":
            counted = split["examples"] * flops.block_states_flops(shape, 32)
            row["gflop_per_s"] = counted / split["seconds"] / 1e9
            row["of_bound"] = counted / split["seconds"] / bound["float32"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the run


def measure_bound(sizes: Sizes, device: torch.device) -> tuple[dict, dict]:
    """(FLOP/s by dtype, the JSON figures): float32 and bfloat16 at this process's threads,
    and float32 at /gist's threads where those differ."""
    n, repeats = sizes.matmul, sizes.repeats
    rates = {
        name: matmul_rate(n, getattr(torch, name), device, repeats)
        for name in ("float32", "bfloat16")
    }
    threads, own = gist_threads(device), torch.get_num_threads()
    rates["gist"] = rates["float32"]
    if threads and threads != own:
        torch.set_num_threads(threads)
        try:
            rates["gist"] = matmul_rate(n, torch.float32, device, repeats)
        finally:
            torch.set_num_threads(own)
    figures = {
        "n": n,
        "threads": own,
        "gist_threads": threads or own,
        **{f"{name}_gflop_per_s": rate / 1e9 for name, rate in rates.items()},
    }
    return rates, figures


def measure_training(data: Path, configs: dict, workdir: Path, sizes: Sizes, bound, *, compiled):
    """Training steps of both models in both dtypes, and the evaluation pass on each
    shipped run's teacher and GistNet (float32, then bfloat16)."""
    rows, evaluation = [], []
    for dtype in ("float32", "bfloat16"):
        for model in ("default", "shipped"):
            config = with_training(configs[model], teacher_dtype=dtype)
            out = workdir / f"run_{model}_{dtype}"
            figures, run = time_training(data, config, out, sizes, bound, compiled=compiled)
            rows.append({"model": model, **figures})
            log(f"training, {model} model, {dtype}", figures)
            if model == "shipped":  # the evaluation pass, on this run's teacher and GistNet
                evaluation.append(time_evaluation(run, sizes, bound))
                log(f"evaluation, {dtype}", evaluation[-1])
            del run
            gc.collect()
    return rows, evaluation


def measure_memory(child: MemoryChild, teacher: Path, data: Path, long_data: Path, configs, sizes):
    """In the child: two shipped float32 steps, then the long window without and with
    activation checkpointing."""
    shipped = with_training(configs["shipped"], teacher_dtype="float32")
    phases = [{"dataset": str(data), "run": shipped, "steps": 2}]
    for on in (False, True):
        long_run = with_training(shipped, batch_size=sizes.long_batch, activation_checkpointing=on)
        phases.append({"dataset": str(long_data), "run": long_run, "steps": 2})
    measured = child.measure(teacher, configs["shipped"]["training"]["device"], phases)
    log("memory", measured)
    return measured[0], measured[1:]


def measure_large(sizes: Sizes, device: torch.device, bound, *, compiled: bool) -> list[dict]:
    """The random 1B and 8B shapes on a GPU; in --smoke, the tiny Llama's on the CPU."""
    if device.type == "cuda":
        shapes = LARGE_SHAPES
    else:
        shapes = {"tiny Llama (smoke)": {**TINY_LLAMA, "vocab_size": 1971}}
    rows = []
    for (name, settings), batch in zip(shapes.items(), sizes.large_batches, strict=True):
        figures = large_shape_training(
            name,
            settings,
            device=device,
            batch=batch,
            steps=sizes.steps,
            compiled=compiled,
            bound=bound,
        )
        rows.append(figures)
        log(f"large shape {name}", figures)
        gc.collect()  # the shape's teacher and GistNet, before the next is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def measure(args, sizes: Sizes, teacher: Path, workdir: Path, child: MemoryChild) -> dict:
    from bench.gist_load import GistServer, served_model

    device = torch.device(args.device)
    # Untimed, while the memory child imports: the token-only training datasets and the
    # checkpoint /gist serves (the shipped model untrained, unless --checkpoint: speed does
    # not depend on the weights); the server starts now, so that it is up by the time
    # the setup is done.
    data, long_data, gist_dir = workdir / "data", workdir / "long", workdir / "gist"
    for folder, horizon in ((data, 64), (long_data, sizes.long_window)):
        prepare_pages(
            teacher,
            folder,
            states="none",
            horizon=horizon,
            tokens=sizes.data_tokens,
            device=args.device,
        )
    configs = run_configs(args.device, sizes.train_batch)
    if args.checkpoint is not None:
        checkpoint = args.checkpoint.resolve()
    else:
        request, run = open_run(data, configs["shipped"], workdir / "served")
        checkpoint = save_run(request, run, steps=0)
        del request, run
    gist_dir.mkdir()
    served = served_model(gist_dir, checkpoint, teacher)
    with GistServer(gist_dir, served, gist_settings(sizes, device)) as server:
        child.wait_ready()
        server.wait_healthy()
        log("set up")
        bound, figures = measure_bound(sizes, device)
        results = {"bound": figures}
        log("bound", figures)
        results["training"], results["evaluation"] = measure_training(
            data, configs, workdir, sizes, bound, compiled=args.compile
        )
        results["gist_raw"], results["gist_http"] = time_gist(
            checkpoint, server, sizes, device, bound["gist"]
        )
    results["preparation"] = time_preparation(teacher, workdir / "prep", sizes, device, bound)
    log("preparation", results["preparation"])
    results["memory"], results["checkpointing"] = measure_memory(
        child, teacher, data, long_data, configs, sizes
    )
    results["horizon_loss"] = horizon_loss_memory(sizes.loss_rows, sizes.loss_vocab, device)
    if device.type == "cuda" or args.smoke:
        results["large"] = measure_large(sizes, device, bound, compiled=args.compile)
    results["verdicts"] = verdicts(results, bound, device)
    return results


# --------------------------------------------------------------------------- the report


def describe_teacher(folder: Path, *, smoke: bool) -> str:
    from gistnet.teacher import load_teacher_config

    config = load_teacher_config(str(folder))
    what = "a tiny random Llama (smoke)" if smoke else folder.name
    return (
        f"{what} (`{config.model_type}`, {config.num_hidden_layers} layers, "
        f"{config.hidden_size} wide, vocabulary {config.vocab_size:,})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument(
        "--checkpoint", type=Path, help="served by /gist (default: the shipped run's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--smoke", action="store_true", help="tiny random Llama, seconds on a CPU")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the teacher's layers and GistNet"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not touch the docs")
    parser.add_argument("--section", help="docs/benchmarks.md section (default speed, speed_gpu)")
    parser.add_argument("--json", type=Path, help="write the figures and the section here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no GPU here")
    if not args.smoke and not (args.teacher / "config.json").is_file():
        raise SystemExit(f"no teacher at {args.teacher}: run scripts/teacher.sh, or pass --teacher")
    sizes = Sizes.of(smoke=args.smoke, cuda=device.type == "cuda")
    command = shlex.join(
        ["python", "-m", "bench.speed", *(argv if argv is not None else sys.argv[1:])]
    )
    load_before = os.getloadavg()[0]
    child = MemoryChild()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            teacher = make_tiny_llama(workdir / "teacher") if args.smoke else args.teacher.resolve()
            teacher_name = describe_teacher(teacher, smoke=args.smoke)
            results = measure(args, sizes, teacher, workdir, child)
    finally:
        child.close()
    body = report(
        results, command=command, loads=(load_before, os.getloadavg()[0]), teacher=teacher_name
    )
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "markdown": body}, indent=1))
    if not args.smoke and not args.no_write:
        from bench.report import write_section

        section = args.section or ("speed_gpu" if device.type == "cuda" else "speed")
        print(f"wrote {write_section(section, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
