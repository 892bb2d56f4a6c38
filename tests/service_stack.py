"""Helpers for the service tests (tests/api, tests/workers, tests/service): stacks on the
embedded default (SQLite records, SQLite broker) and on real PostgreSQL and Redis databases
made for the session, worker and server subprocesses, and waiting for jobs.

The API and worker tests run on both kinds of stack (`STACK_KINDS`). The embedded one needs
nothing installed, so `bash scripts/test.sh` on a laptop exercises the API and a real
worker; the PostgreSQL + Redis one skips, with the reason, when a server is unreachable,
and with GISTNET_REQUIRE_SERVICES=1 (as .ci/run sets) fails instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db.migrate import upgrade_database
from service.queue import TERMINAL
from service.settings import Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[1]

POSTGRES_ADMIN_URL = os.environ.get(
    "GISTNET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_SERVER_URL = os.environ.get("GISTNET_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Database numbers of the tests' own; each test folder takes its own, and each session its
# own key prefix, so no worker ever sees another folder's or session's messages.
REDIS_BASE_DB = int(os.environ.get("GISTNET_TEST_REDIS_DB", "12"))
REDIS_DB = {"api": REDIS_BASE_DB, "workers": REDIS_BASE_DB + 1, "crash": REDIS_BASE_DB + 2}


def services_unavailable(reason: str):
    if os.environ.get("GISTNET_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; GISTNET_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database on the PostgreSQL server, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"gistnet_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        services_unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {err}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        server = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        try:
            yield server.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
        finally:
            from service.db.engine import dispose_engines

            dispose_engines()
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def redis_database(number: int) -> Iterator[dict[str, str]]:
    """Broker settings on redis://.../<number> with a key prefix of this session's own, so
    test sessions running at the same time never take each other's messages. The keys
    are deleted afterwards."""
    import redis

    url = f"{REDIS_SERVER_URL}/{number}"
    prefix = f"gistnet-test-{uuid.uuid4().hex[:10]}:"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as err:
        services_unavailable(f"Redis at {REDIS_SERVER_URL} is unreachable: {err}")
    try:
        yield {"broker_url": url, "broker_key_prefix": prefix}
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


# The embedded default a user gets with nothing installed, and the production pair.
STACK_KINDS = ["embedded", "postgres-redis"]


@contextmanager
def stack_of_kind(kind: str, root: Path, *, redis_db: int, **overrides: Any) -> Iterator[Stack]:
    """A migrated stack of the given kind under `root`, removed (databases, keys) afterwards."""
    if kind == "embedded":
        yield make_stack(
            root,
            database_url=f"sqlite:///{root}/var/gistnet.sqlite",
            broker_url=f"sqla+sqlite:///{root}/var/broker.sqlite",
            **overrides,
        )
        return
    with postgres_database() as database_url, redis_database(redis_db) as broker:
        yield make_stack(root, database_url=database_url, **broker, **overrides)


def sample_teacher() -> str:
    """The shipped sample teacher + tokenizer folder (GISTNET_TEST_TEACHER overrides it)."""
    path = Path(os.environ.get("GISTNET_TEST_TEACHER", REPO / "samples" / "teacher"))
    if not (path / "config.json").is_file():
        pytest.fail(
            f"no teacher at {path}: make the sample with `python -m tools.make_sample_teacher`",
            pytrace=False,
        )
    return str(path.resolve())


def tiny_documents(count: int = 12, seed: int = 1234) -> list[str]:
    """Short stories from the sample generator: a few hundred blocks in all."""
    from gistnet.sample.corpus import generate_documents

    return generate_documents(count, seed=seed)


# Short intervals so crashes are noticed in seconds, not minutes.
FAST = {
    "device": "cpu",
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 3.0,
    "resume_every": 5,
    "progress_interval_s": 0.2,
    "cancel_poll_s": 0.2,
    # A queued job whose message is lost is sent again within seconds.
    "queued_resend_s": 2.0,
    "queued_resend_max_s": 8.0,
}
# For the worker and server subprocesses only: they and the test process share two cores,
# so one torch thread each. (The in-process app is left alone: torch's thread count is
# process-wide and other tests run in this process.)
SUBPROCESS_ONLY = {"torch_threads": 1}


@dataclass
class Stack:
    """Settings for one platform instance, and the same settings as GISTNET_* variables."""

    settings: Settings
    env: dict[str, str]
    root: Path


def make_stack(root: Path, *, database_url: str, broker_url: str, **overrides: Any) -> Stack:
    values = {
        "database_url": database_url,
        "broker_url": broker_url,
        "artifact_root": root / "artifacts",
        "data_root": root / "data",
        **FAST,
        **overrides,
    }
    settings = load_settings(**values)
    for folder in (settings.artifact_root, settings.data_root):
        if isinstance(folder, Path):  # an object-store root is a bucket the test made
            folder.mkdir(parents=True, exist_ok=True)
    upgrade_database(database_url)
    env = {
        env_name(k): json.dumps(v) if isinstance(v, dict | list) else str(v)
        for k, v in {**values, **SUBPROCESS_ONLY}.items()
    }
    return Stack(settings=settings, env=env, root=root)


def subprocess_env(stack_env: dict[str, str]) -> dict[str, str]:
    """This environment without any GISTNET_* of its own, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GISTNET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **stack_env}


class ServiceProcess:
    """`python -m tools.cli ...` in its own process group, its output in a log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], log_path: Path):
        self.args, self.env, self.log_path = args, env, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", *self.args],
            env=subprocess_env(self.env),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited early:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{text!r} never appeared in {self.log_path}:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group: the worker's main process and its pool children."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the main process, as a user or an orchestrator stops it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class RunningService:
    """`gistnet serve` running the embedded stack: its settings, URL and API key."""

    stack: Stack
    url: str
    api_key: str | None
    server: ServiceProcess

    def http(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


@contextmanager
def embedded_service(root: Path, *, api_key: str | None = None, **overrides: Any):
    """`gistnet serve` on SQLite records and the SQLite broker with its one local worker,
    as a user starts it; stopped (with its worker) afterwards."""
    if api_key is not None:
        overrides["api_key"] = api_key
    stack = make_stack(
        root,
        database_url=f"sqlite:///{root}/var/gistnet.sqlite",
        broker_url=f"sqla+sqlite:///{root}/var/broker.sqlite",
        **overrides,
    )
    port = free_port()
    server = ServiceProcess(
        ["serve", "--port", str(port)], env=stack.env, log_path=root / "serve.log"
    ).start()
    try:
        server.wait_for_log(f"Uvicorn running on http://127.0.0.1:{port}")
        server.wait_for_log(" ready.")  # the local worker
        yield RunningService(
            stack=stack, url=f"http://127.0.0.1:{port}", api_key=api_key, server=server
        )
    finally:
        server.stop(timeout=60)


def start_worker(stack: Stack, name: str = "worker", queues: str = "prep,train") -> ServiceProcess:
    worker = ServiceProcess(
        ["worker", "--queues", queues], env=stack.env, log_path=stack.root / f"{name}.log"
    ).start()
    worker.wait_for_log(" ready.")
    return worker


def wait_for_job(
    client: httpx.Client, job_id: int, *, until=TERMINAL, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.2)


def wait_until(predicate, *, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def dataset_body(
    teacher: str, documents: list[str], *, name: str = "tiny", validation: int = 2, **extra: Any
) -> dict[str, Any]:
    """A POST /datasets body with inline documents: the last `validation` are held out."""
    return {
        "dataset_name": name,
        "tokenizer": teacher,
        "teacher_model": teacher,
        "block_size": 32,
        "horizon": 64,
        "splits": {
            "train": {"documents": documents[:-validation]},
            "validation": {"documents": documents[-validation:]},
        },
        **extra,
    }


def train_body(dataset_id: int, *, max_steps: int = 12, **training: Any) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "split": "train",
        "model": {"num_heads": 4},
        "training": {"batch_size": 8, "max_steps": max_steps, "eval_every": 1000, **training},
    }


def record_ready_dataset(
    settings: Settings, teacher: str, *, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A dataset prepared in-process with the library and recorded `ready`, as a worker
    would record it: {id, info}. `config` replaces the default: a few sample stories
    through `teacher`."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from service.db.engine import session_scope
    from service.db.models import Dataset, Job
    from service.queue import JobKind, JobStatus, ProductStatus, QueueName

    if config is None:
        documents = tiny_documents(6)
        config = {
            "dataset_name": "ready",
            "tokenizer": teacher,
            "teacher_model": teacher,
            "teacher_device": "cpu",
            "splits": {
                "train": {"documents": documents[:4]},
                "validation": {"documents": documents[4:]},
            },
        }
    with session_scope(settings.database_url) as session:
        dataset = Dataset(name=config["dataset_name"], config=config, status=ProductStatus.READY)
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
        session.add(
            Job(
                kind=JobKind.PREPARE,
                queue=QueueName.PREP,
                status=JobStatus.SUCCEEDED,
                dataset_id=dataset_id,
            )
        )
    out = settings.artifact_path(f"datasets/{dataset_id}")
    info = prepare_dataset(validate_dataset_config(config), output_dir=out)
    info["splits"] = {k: {**v, "path": f"{k}.arrow"} for k, v in info["splits"].items()}
    with session_scope(settings.database_url) as session:
        row = session.get(Dataset, dataset_id)
        row.info, row.path = info, f"datasets/{dataset_id}"
    return {"id": dataset_id, "info": info}


def record_trained_model(
    settings: Settings,
    dataset: dict[str, Any],
    *,
    model: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A model trained in-process for a few steps and recorded: {id, checkpoint, job_id,
    result} (`result`: train_gistnet's).
    `model` is the run config's model section (default: the defaults); `training` adds to
    its training section (3 steps of 4 on the CPU)."""
    from gistnet.checkpoint import read_checkpoint_info
    from gistnet.config import validate_run_config
    from gistnet.train import train_gistnet
    from gistnet.train_request import TrainRequest, TrainSettings
    from service.db.engine import session_scope
    from service.db.models import Job
    from service.db.records import record_model
    from service.queue import JobKind, JobStatus, QueueName

    with session_scope(settings.database_url) as session:
        job = Job(
            kind=JobKind.TRAIN,
            queue=QueueName.TRAIN,
            status=JobStatus.SUCCEEDED,
            dataset_id=dataset["id"],
        )
        session.add(job)
        session.flush()
        job_id = job.id
    output = settings.artifact_path(f"jobs/{job_id}")
    result = train_gistnet(
        TrainRequest(
            dataset=settings.artifact_path(f"datasets/{dataset['id']}/train.arrow"),
            output_dir=output,
            settings=TrainSettings(
                run=validate_run_config(
                    {
                        "model": model or {},
                        "training": {
                            "max_steps": 3,
                            "batch_size": 4,
                            "device": "cpu",
                            **(training or {}),
                        },
                    }
                )
            ),
        )
    )
    with session_scope(settings.database_url) as session:
        recorded = record_model(
            session,
            job_id=job_id,
            dataset_id=dataset["id"],
            split="train",
            checkpoint_path=f"jobs/{job_id}/gistnet.pt",
            info=read_checkpoint_info(result.checkpoint_path),
            steps=result.steps,
            final_loss=result.final_loss,
            val_loss=result.val_loss,
        )
        return {
            "id": recorded.id,
            "checkpoint": result.checkpoint_path,
            "job_id": job_id,
            "result": result,
        }


@contextmanager
def served(app) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn server on a free port, in a thread: real sockets and
    keep-alive connections, which a test client does not have. Yields (host, port)."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=60, what="uvicorn up")
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
