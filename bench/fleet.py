"""Running on a fleet: shard reads from an S3-protocol server (first read, then cached)
against the same shard as a local file, and training steps/s over 1 and 2 processes (DDP,
gloo on the CPU). Writes its section of docs/benchmarks.md.

    python -m bench.fleet [--examples 8192] [--steps 60] [--no-write]

The S3 server is moto's (the tests' server) on 127.0.0.1, so "first read" measures the
protocol and the cache's fill, not a network: a real bucket adds its bandwidth and latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.report import machine, table, write_section
from gistnet.shards import make_record_batch, open_shard, shard_schema
from gistnet.train_request import TrainRequest, TrainSettings

T, H, D = 32, 64, 128


def write_shard(path: Path, examples: int) -> None:
    rng = np.random.default_rng(0)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, shard_schema(T, H, D)) as w:
        for start in range(0, examples, 1024):
            n = min(1024, examples - start)
            ctx = rng.integers(0, 2000, size=(n, H), dtype=np.int32)
            states = rng.standard_normal((n, T, D), dtype=np.float32)
            w.write_batch(
                make_record_batch(
                    input_ids=ctx[:, :T], context_input_ids=ctx, teacher_hidden=states
                )
            )


def read_all(path: Path) -> float:
    """Open the shard and touch every teacher state, as an epoch of training does."""
    shard = open_shard(path)
    return float(shard.teacher_hidden.sum(dtype=np.float64))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_reads(work: Path, examples: int, repeats: int) -> list[list[object]]:
    from gistnet.storage import ArtifactStore
    from tests.s3_server import CREDENTIALS, s3_server

    os.environ.update(CREDENTIALS)
    local = work / "train.arrow"
    write_shard(local, examples)
    size_mib = local.stat().st_size / 2**20
    with s3_server() as server:
        bucket = server.new_bucket("bench")

        def store(cache: Path) -> ArtifactStore:
            return ArtifactStore(
                f"s3://{bucket}/p", storage_options=server.storage_options, cache_dir=cache
            )

        store(work / "cache").publish(local, "datasets/1/train.arrow")
        local_s = timed(lambda: read_all(local), repeats)
        first_runs = []
        for i in range(repeats):  # every first read into a cache of its own
            cold = store(work / f"cold-{i}")
            started = time.perf_counter()
            read_all(cold.open_local("datasets/1/train.arrow"))
            first_runs.append(time.perf_counter() - started)
        first_s = statistics.median(first_runs)
        warm = store(work / "cold-0")
        cached_s = timed(lambda: read_all(warm.open_local("datasets/1/train.arrow")), repeats)

    def row(what: str, seconds: float) -> list[object]:
        return [
            what,
            f"{seconds * 1000:.0f}",
            f"{size_mib / seconds:,.0f}",
            f"{seconds / local_s:.1f}x",
        ]

    return [
        row("local file (baseline)", local_s),
        row("s3:// first read (download into the cache)", first_s),
        row("s3:// cached (HEAD to check the object, then the local copy)", cached_s),
    ], size_mib


def bench_training(work: Path, steps: int) -> list[list[object]]:
    from gistnet.config import validate_dataset_config, validate_run_config
    from gistnet.data import prepare_dataset
    from tests.conftest import small_dataset_config

    out = work / "dataset"
    prepare_dataset(validate_dataset_config(small_dataset_config()), output_dir=out)
    import torch

    rows = []
    default_threads = torch.get_num_threads()
    # torch.distributed.run gives each rank OMP_NUM_THREADS=1: one process is measured
    # both with torch's default threads and with one, so the comparison is fair.
    for processes, threads in ((1, default_threads), (1, 1), (2, 1)):
        torch.set_num_threads(threads)
        stamps: dict[int, float] = {}
        config = validate_run_config(
            {
                "model": {"num_heads": 4},
                "training": {
                    "batch_size": 64,
                    "max_steps": steps,
                    "device": "cpu",
                    "eval_every": 10 * steps,
                    "processes": processes,
                },
            }
        )
        from gistnet.launch import launch_training

        started = time.perf_counter()
        result = launch_training(
            TrainRequest(
                dataset=out / "train.arrow",
                output_dir=work / f"run-{processes}",
                settings=TrainSettings(run=config),
            ),
            on_progress=lambda p, stamps=stamps: stamps.__setitem__(p.step, time.perf_counter()),
        )
        wall = time.perf_counter() - started
        skip = min(10, steps // 4)  # the first steps warm up allocators and threads
        rate = (steps - skip) / (stamps[steps] - stamps[skip])
        rows.append(
            [
                processes,
                threads,
                f"{rate:.1f}",
                f"{wall:.1f}",
                f"{result.final_loss:.5f}",
            ]
        )
    torch.set_num_threads(default_threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8192, help="examples in the shard read")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        work = Path(scratch)
        reads, size_mib = bench_reads(work, args.examples, args.repeats)
        training = bench_training(work, args.steps)
    body = "\n\n".join(
        [
            "## Object storage and multi-process training (`bench/fleet.py`)",
            f"Machine: {machine()}. `python -m bench.fleet --examples {args.examples} "
            f"--steps {args.steps}`.",
            f"Reading a {size_mib:.0f} MiB shard and touching every teacher state (median of "
            f"{args.repeats}); the S3 server is moto's on 127.0.0.1, so the first read measures "
            f"the protocol and the cache fill, not a network.",
            table(["read", "ms", "MiB/s", "vs local"], reads),
            f"Training GistNet on the sample dataset, batch 64 (split across the processes), "
            f"{args.steps} steps, CPU with gloo. Steps/s after the first steps; wall time "
            f"includes starting the processes (torch.distributed.run, imports, rendezvous). "
            f"The final losses agree: the split does not change the result.",
            table(["processes", "threads each", "steps/s", "wall s", "final loss"], training),
            "Caveat: this machine has 2 cores, shared with other work while this ran, so the "
            "figures move from run to run. Two processes at most double the cores' use "
            "against one process with one thread, and add an all-reduce per step; a torch "
            "thread pool that spins on a busy machine can make the single process look far "
            "worse than that. DDP is meant for one GPU per process, where each rank has a "
            "device of its own.",
        ]
    )
    print(body)
    if not args.no_write:
        print(f"\nwritten to {write_section('fleet', body)}")


if __name__ == "__main__":
    main()
