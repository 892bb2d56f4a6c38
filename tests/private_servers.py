"""Private Redis and PostgreSQL servers for fault tests: each on a free port of its own, in
a temporary folder, restarted or stopped by the test and removed afterwards.

Fault tests must never touch the shared servers on 6379 and 5432, which other test
sessions use at the same time. When the server programs are not installed these tests
skip with the reason, and with GISTNET_REQUIRE_SERVICES=1 (as .ci/run sets) fail instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.service_stack import services_unavailable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout}s")


class PrivateRedis:
    """redis-server on a free port, saving nothing: a restart loses every message, as a
    Redis restarted with `SHUTDOWN NOSAVE` (or without persistence) does."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        _wait_for_port(self.port, timeout=20, what="redis-server")

    def shutdown_nosave(self) -> None:
        # Said on a plain socket: a client library would retry the connection it loses.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            try:
                sock.recv(64)  # the server closes the connection as it goes
            except OSError:
                pass
        self.process.wait(timeout=20)

    def restart(self) -> None:
        self.shutdown_nosave()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        services_unavailable("redis-server is not installed: the Redis fault tests need it")
    folder = Path(tempfile.mkdtemp(prefix="gistnet-redis-"))
    server = PrivateRedis(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _postgres_bin() -> Path | None:
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb, pg_ctl) on a free port. PostgreSQL refuses
    to run as root, so as root it runs as the `postgres` user."""

    def __init__(self, folder: Path, bin_dir: Path, user: str | None):
        self.folder, self.bin_dir, self.user = folder, bin_dir, user
        self.data = folder / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off "
            f"-c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        services_unavailable(
            "PostgreSQL's initdb/pg_ctl are not installed: the fault tests need them"
        )
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            services_unavailable("running as root with no `postgres` user to run a private cluster")
        if shutil.which("runuser") is None:
            services_unavailable("running as root without runuser to start PostgreSQL as postgres")
        user = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="gistnet-pg-"))
    if user is not None:
        shutil.chown(folder, user=user)
    server = PrivatePostgres(folder, bin_dir, user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop(mode="immediate")
        except Exception:
            pass  # never started, or already stopped
        shutil.rmtree(folder, ignore_errors=True)
