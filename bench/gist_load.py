"""POST /gist under load, against the model's raw batched forward on the same machine.

    python -m bench.gist_load [--clients 1,8,64] [--blocks-per-request 4] [--seconds 10]

It builds a small checkpoint on the sample teacher (or takes --checkpoint), records it as a
model in a scratch SQLite database, starts the real server (`gistnet serve --no-worker`),
and drives POST /gist from N concurrent keep-alive connections for a fixed time each. The
load generator is a few lines of asyncio over raw HTTP/1.1, so that the client, which shares
the machine, costs as little as possible. Then, in the same run and with the server idle,
it times the raw forward (teacher, then GistNet, no HTTP) on full batches of
GISTNET_GIST_MAX_BATCH blocks. Target: at 64 clients, at least 70% of the raw blocks/s.
Results go to docs/benchmarks.md between the `bench:gist_load` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEACHER = ROOT / "samples" / "teacher"
TARGET = 0.70


def make_checkpoint(workdir: Path, artifacts: Path, teacher: Path) -> Path:
    """A few training steps on a handful of generated stories: speed does not depend on
    how well GistNet is trained."""
    from gistnet.config import validate_dataset_config, validate_run_config
    from gistnet.data import prepare_dataset
    from gistnet.sample.corpus import generate_documents
    from gistnet.train import train_gistnet
    from gistnet.train_request import TrainRequest, TrainSettings

    config = validate_dataset_config(
        {
            "dataset_name": "bench",
            "tokenizer": str(teacher),
            "teacher_model": str(teacher),
            "teacher_device": "cpu",
            "splits": {"train": {"documents": generate_documents(6, seed=7)}},
        }
    )
    prepare_dataset(config, output_dir=workdir / "dataset")
    result = train_gistnet(
        TrainRequest(
            dataset=workdir / "dataset" / "train.arrow",
            output_dir=artifacts / "bench",
            settings=TrainSettings(
                run=validate_run_config({"training": {"max_steps": 3, "device": "cpu"}})
            ),
        )
    )
    return result.checkpoint_path


def served_model(workdir: Path, checkpoint: Path | None, teacher: Path):
    """The checkpoint to serve (the one given, else one trained here on `teacher`), its
    artifact root, and its record in a fresh SQLite database: (checkpoint, artifacts,
    database_url, model_id)."""
    artifacts = workdir / "artifacts"
    if checkpoint is None:
        checkpoint = make_checkpoint(workdir, artifacts, teacher.resolve())
    else:
        artifacts = checkpoint.resolve().parent
    database_url = f"sqlite:///{workdir}/records.sqlite"
    return (
        checkpoint,
        artifacts,
        database_url,
        record_model(database_url, checkpoint.resolve(), artifacts),
    )


def record_model(database_url: str, checkpoint: Path, artifacts: Path) -> int:
    from gistnet.checkpoint import read_checkpoint_info
    from service.db.engine import session_scope
    from service.db.jobs import create_job
    from service.db.migrate import upgrade_database
    from service.db.records import create_dataset
    from service.db.records import record_model as record
    from service.queue import JobKind, JobStatus

    upgrade_database(database_url)
    info = read_checkpoint_info(checkpoint)
    with session_scope(database_url) as session:
        dataset, prep = create_dataset(session, name="bench", config={})
        prep.status = JobStatus.SUCCEEDED
        job = create_job(session, kind=JobKind.TRAIN, dataset_id=dataset.id)
        job.status = JobStatus.SUCCEEDED
        model = record(
            session,
            job_id=job.id,
            dataset_id=dataset.id,
            split="train",
            checkpoint_path=os.path.relpath(checkpoint, artifacts),
            info=info,
            steps=info["metrics"]["steps"],
            final_loss=None,
            val_loss=None,
        )
        return model.id


# --------------------------------------------------------------------------- load


async def _connection(port: int, bodies: list[bytes], until: float, latencies: list, errors: list):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    requests = [
        b"POST /gist HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    i = 0
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(status)
    finally:
        writer.close()


def drive(port: int, *, clients: int, seconds: float, bodies: list[bytes]) -> dict:
    latencies: list[float] = []
    errors: list[int] = []

    async def main():
        until = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _connection(port, bodies[c::clients] or bodies, until, latencies, errors)
                for c in range(clients)
            )
        )

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": len(errors),
    }


def raw_forward(
    checkpoint: Path, *, device: str, batch: int, seconds: float, vocab: int, threads: int | None
) -> float:
    """Blocks/s of GistEncoder.encode on full batches: the ceiling the server can reach."""
    import torch

    from gistnet.inference import GistEncoder

    if threads is not None:
        torch.set_num_threads(threads)
    encoder = GistEncoder.from_checkpoint(checkpoint, device=device)
    return encoded_blocks_per_s(encoder, batch=batch, seconds=seconds, vocab=vocab)


def encoded_blocks_per_s(encoder, *, batch: int, seconds: float, vocab: int) -> float:
    """Blocks/s of `encoder.encode` on batches of `batch` random blocks, after 3 untimed."""
    import torch

    ids = torch.from_numpy(
        np.random.default_rng(0).integers(0, vocab, size=(batch, encoder.block_size))
    )
    for _ in range(3):
        encoder.encode(ids)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.encode(ids)
        done += batch
    return done / (time.perf_counter() - started)


# --------------------------------------------------------------------------- run


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the server did not come up")


@dataclass(frozen=True)
class LoadSettings:
    """How the server is run and driven: the concurrency levels, each for `seconds`, of
    requests of `blocks_per_request` blocks; the server's device, its batching
    (GISTNET_GIST_MAX_BATCH, GISTNET_GIST_BATCH_WAIT_MS) and torch threads (0: torch's
    default); a warm-up of `warmup_seconds` at 4 clients first (it loads the model)."""

    clients: tuple[int, ...] = (1, 8, 64)
    blocks_per_request: int = 4
    seconds: float = 10.0
    device: str = "cpu"
    max_batch: int = 64
    wait_ms: float = 5.0
    threads: int = 1
    warmup_seconds: float = 2.0


def start_server(
    workdir: Path,
    *,
    database_url: str,
    artifacts: Path,
    port: int,
    threads: int | None,
    device: str = "cpu",
    **settings: str,
) -> subprocess.Popen:
    """`gistnet serve --no-worker` on `port` over the scratch records and artifacts in
    `workdir`, with none of this environment's GISTNET_* settings but these (`settings`:
    further GISTNET_* variables), in a session of its own (stop it with
    tools.processes.stop_process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GISTNET_")}
    env.update(
        {
            "GISTNET_DATABASE_URL": database_url,
            "GISTNET_BROKER_URL": f"sqla+sqlite:///{workdir}/broker.sqlite",
            "GISTNET_ARTIFACT_ROOT": str(artifacts),
            "GISTNET_DATA_ROOT": str(workdir / "data"),
            "GISTNET_DEVICE": device,
            "PYTHONPATH": str(ROOT),
            **settings,
        }
    )
    if threads:
        env["GISTNET_TORCH_THREADS"] = str(threads)
    command = [sys.executable, "-m", "tools.cli", "serve", "--no-worker", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, cwd=ROOT, start_new_session=True
    )


class GistServer:
    """The real server (`gistnet serve --no-worker`) on `served` (what `served_model`
    returns), started when made and stopped on leaving its `with` block."""

    def __init__(self, workdir: Path, served: tuple, settings: LoadSettings):
        from tools.processes import free_port

        _checkpoint, artifacts, database_url, self.model_id = served
        self.settings = settings
        self.port = free_port(8000)
        self.process = start_server(
            workdir,
            database_url=database_url,
            artifacts=artifacts,
            port=self.port,
            threads=settings.threads,
            device=settings.device,
            GISTNET_GIST_MAX_BATCH=str(settings.max_batch),
            GISTNET_GIST_BATCH_WAIT_MS=str(settings.wait_ms),
        )

    def __enter__(self) -> GistServer:
        return self

    def __exit__(self, *exc) -> None:
        from tools.processes import stop_process

        stop_process(self.process)

    def wait_healthy(self) -> None:
        wait_healthy(self.port, self.process)

    def drive_levels(self, *, vocab: int, block_size: int) -> dict[int, dict]:
        """POST /gist with random blocks at each concurrency level in turn, after the
        warm-up (which loads the model): {clients: drive's figures}."""
        settings = self.settings
        rng = np.random.default_rng(1)
        shape = (settings.blocks_per_request, block_size)
        bodies = [
            json.dumps(
                {"model_id": self.model_id, "blocks": rng.integers(0, vocab, shape).tolist()}
            ).encode()
            for _ in range(128)
        ]
        drive(self.port, clients=4, seconds=settings.warmup_seconds, bodies=bodies)
        results = {}
        for clients in settings.clients:
            results[clients] = r = drive(
                self.port, clients=clients, seconds=settings.seconds, bodies=bodies
            )
            print(
                f"{clients:>3} clients: {r['requests_per_s']:8.1f} req/s  "
                f"{r['requests_per_s'] * settings.blocks_per_request:8.1f} blocks/s  "
                f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}",
                flush=True,
            )
        return results


def drive_server(
    workdir: Path, served: tuple, settings: LoadSettings, *, vocab: int, block_size: int
) -> dict[int, dict]:
    """Start the server on `served`, drive each concurrency level, stop it."""
    with GistServer(workdir, served, settings) as server:
        server.wait_healthy()
        return server.drive_levels(vocab=vocab, block_size=block_size)


def load_table(results: dict[int, dict], raw: float, blocks_per_request: int) -> str:
    """drive_server's figures beside the raw forward's blocks/s, as a markdown table."""
    from bench.report import table

    rows = []
    for clients, r in results.items():
        blocks = r["requests_per_s"] * blocks_per_request
        rows.append(
            [
                clients,
                f"{r['requests_per_s']:,.1f}",
                f"{blocks:,.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{blocks / raw:.0%}",
                r["errors"],
            ]
        )
    headers = ["clients", "requests/s", "blocks/s", "p50 ms", "p99 ms", "of raw", "errors"]
    return table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,8,64", help="comma-separated concurrency levels")
    parser.add_argument("--blocks-per-request", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--checkpoint", type=Path, help="default: train a small one")
    parser.add_argument("--teacher", type=Path, default=SAMPLE_TEACHER, help="for that one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=64, help="GISTNET_GIST_MAX_BATCH")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="GISTNET_GIST_BATCH_WAIT_MS")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, server and raw alike; 1 leaves the second core of a 2-core "
        "machine to the event loop and the load generator (0: torch's default)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not touch the docs")
    parser.add_argument(
        "--section",
        default="gist_load",
        help="the docs/benchmarks.md section written (bench:NAME markers): one per teacher",
    )
    args = parser.parse_args()
    settings = LoadSettings(
        clients=tuple(int(c) for c in args.clients.split(",")),
        blocks_per_request=args.blocks_per_request,
        seconds=args.seconds,
        device=args.device,
        max_batch=args.max_batch,
        wait_ms=args.wait_ms,
        threads=args.threads,
    )
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        served = served_model(workdir, args.checkpoint, args.teacher)
        checkpoint = served[0]

        from gistnet.checkpoint import read_checkpoint_info

        info = read_checkpoint_info(checkpoint)
        block_size, dim = int(info["block_size"]), int(info["hidden_size"])
        teacher_dir = Path(info["teacher"]["model"])
        teacher_config = json.loads((teacher_dir / "config.json").read_text())
        vocab = int(teacher_config["vocab_size"])
        teacher_name = (
            "the sample teacher"
            if teacher_dir.resolve() == SAMPLE_TEACHER.resolve()
            else f"{teacher_dir.name} (`{teacher_config['model_type']}`)"
        )
        results = drive_server(workdir, served, settings, vocab=vocab, block_size=block_size)
        raw = raw_forward(
            checkpoint,
            device=args.device,
            batch=args.max_batch,
            seconds=args.seconds,
            vocab=vocab,
            threads=args.threads or None,
        )
        print(f"raw forward, batches of {args.max_batch}: {raw:.1f} blocks/s")

    top = max(results)
    share = results[top]["requests_per_s"] * args.blocks_per_request / raw
    verdict = "met" if share >= TARGET else "NOT met"
    print(f"{top} clients reach {share:.0%} of the raw forward (target {TARGET:.0%}: {verdict})")
    if args.no_write:
        return 0

    from bench.report import machine, write_section

    title = "" if teacher_name == "the sample teacher" else f", {teacher_name}"
    chosen = "" if args.checkpoint is None else f" --checkpoint {args.checkpoint}"
    if args.section != "gist_load":
        chosen += f" --section {args.section}"
    body = (
        f"## Gist serving under load (`bench/gist_load.py`){title}\n\n"
        f"Command: `python -m bench.gist_load --clients {args.clients} "
        f"--blocks-per-request {args.blocks_per_request} --seconds {args.seconds:g} "
        f"--threads {args.threads}{chosen}`  \n"
        f"Machine: {machine()}; server, load generator and raw forward share it "
        f"(1-minute load average {load_before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after).  \n"
        f"Model: {teacher_name} ({dim} wide) + GistNet, blocks of {block_size} tokens, "
        f"device {args.device}; server batches up to {args.max_batch} blocks, waiting at "
        f"most {args.wait_ms:g} ms; {args.blocks_per_request} blocks per request.  \n"
        f"Raw batched forward (teacher + GistNet, no HTTP, batches of {args.max_batch}): "
        f"**{raw:,.0f} blocks/s**.  \n"
        f"Target: at {top} clients, at least {TARGET:.0%} of the raw throughput: "
        f"**{share:.0%}, {verdict}**.\n\n" + load_table(results, raw, args.blocks_per_request)
    )
    print(f"wrote {write_section(args.section, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
