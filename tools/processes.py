"""Starting and stopping the platform's own processes: a local worker beside the API, the
server the demo and benchmarks run, and a free port for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if nothing listens there, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind((host, preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _terminate_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM it when the process that started it dies,
    so a local worker never outlives a `gistnet serve` that was killed."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_local_worker(queues: str = "prep,train") -> subprocess.Popen:
    """A worker subprocess with this process's environment (and so its settings).

    The API shares the machine with it, so unless GISTNET_TORCH_THREADS says otherwise the
    worker's torch leaves one core free: on a small machine, torch threads that compete
    with the API for every core slow each training step several times over.
    """
    command = [sys.executable, "-m", "tools.cli", "worker", "--queues", queues]
    env = dict(os.environ)
    env.setdefault("GISTNET_TORCH_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    return subprocess.Popen(
        command, env=env, start_new_session=True, preexec_fn=_terminate_with_parent
    )


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process (a Celery worker then stops its pool children after their
    current task), SIGKILL to its whole process group if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
