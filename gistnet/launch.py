"""Training over N processes with PyTorch DDP, launched by `torch.distributed.run`.

`launch_training` is the entry point that honours `training.processes`: with one it runs
`train_gistnet` in this process; with N > 1 it starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m gistnet.launch RUN_DIR`
and waits for it: each rank runs the same `train_gistnet` on its part of every batch (gloo
on CPU, NCCL with one GPU per rank; see `gistnet.distributed.Ranks`) and DDP averages the
gradients. The caller's callbacks keep working through files in RUN_DIR, so the CLI and a
Celery task need not know how many processes train:

    spec.json      the TrainRequest (`to_dict`) and the launcher's pid, written first
    events.jsonl   rank 0's progress and resume-checkpoint events, one JSON object a line
    log-<rank>.jsonl  each rank's log records (gistnet's INFO and up, any library's
                   warnings and errors, Python warnings), which the launcher logs again
                   through the logger that made them as `rank N: <message>`: the caller's
                   logging (a job's log, a terminal) gets every rank's lines
    cancel         created by the launcher when the caller's cancel check says stop
    result.json    rank 0's result, written last; error-<rank>.json: a library error

Results do not depend on N: the step's global batch is the one a single process draws.
Only rank 0 reports progress, scores the validation split and writes checkpoints; every
step it tells the others whether to stop. A rank that dies takes the launch down
(`--max-restarts 0`) and the launcher raises `TrainingProcessFailed`, which the service
treats like a lost worker: the job runs again and resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gistnet import errors
from gistnet.devices import resolve_device
from gistnet.distributed import Ranks
from gistnet.errors import DeviceError, GistNetError
from gistnet.files import atomic_write
from gistnet.train import TrainProgress, TrainResult, train_gistnet
from gistnet.train_request import TrainRequest

# torch.distributed.run's checks on its ranks: how often it looks (a dead rank is noticed
# within this) and, once one failed, how long the others get to exit before SIGKILL.
MONITOR_INTERVAL_S = 0.5
# The fields of TrainResult that are paths: strings in result.json.
_PATHS = ("checkpoint_path", "pretrained_path")

log = logging.getLogger(__name__)


class TrainingProcessFailed(GistNetError):
    """A training process died (killed, out of memory, a crashed GPU). Running the job again
    resumes from its last checkpoint, as after a lost worker."""

    retryable = True


def _append_event(run_dir: Path, event: dict[str, Any]) -> None:
    with (run_dir / "events.jsonl").open("a") as fh:
        fh.write(json.dumps(event) + "\n")


def _new_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    """The whole lines written to `path` since `offset`, and the offset after them; a line
    still being written is read next time."""
    if not path.exists():
        return [], offset
    lines = []
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            lines.append(line)
    return lines, offset


def _relay(run_dir: Path, offset: int, on_progress, on_checkpoint) -> int:
    """Hand the events written since `offset` to the caller's callbacks."""
    lines, offset = _new_lines(run_dir / "events.jsonl", offset)
    for line in lines:
        event = json.loads(line)
        kind = event.pop("event")
        if kind == "progress" and on_progress is not None:
            on_progress(TrainProgress(**event))
        elif kind == "checkpoint" and on_checkpoint is not None:
            on_checkpoint(Path(event["path"]))
    return offset


def _forward_rank_logs(run_dir: Path, offsets: dict[str, int]) -> None:
    """Log the records the ranks wrote since `offsets` (per file, updated) here, through
    the logger that made each, at its level, as `rank N: <message>`."""
    for path in sorted(run_dir.glob("log-*.jsonl")):
        lines, offsets[path.name] = _new_lines(path, offsets.get(path.name, 0))
        rank = path.stem.removeprefix("log-")
        for line in lines:
            record = json.loads(line)
            logging.getLogger(record["logger"]).log(
                record["level"], "rank %s: %s", rank, record["message"]
            )


def _raise_rank_error(run_dir: Path, returncode: int) -> None:
    for path in sorted(run_dir.glob("error-*.json")):
        error = json.loads(path.read_text())
        kind = getattr(errors, error["type"], None)
        if isinstance(kind, type) and issubclass(kind, GistNetError):
            raise kind(error["message"])
        raise GistNetError(f"{error['type']}: {error['message']}")
    log = (
        (run_dir / "launch.log").read_text(errors="replace")
        if (run_dir / "launch.log").exists()
        else ""
    )
    tail = "\n".join(log.strip().splitlines()[-15:])
    raise TrainingProcessFailed(
        f"a training process died (torch.distributed.run exited with {returncode}); the "
        f"job resumes from its last checkpoint when run again. Launcher output:\n{tail}"
    )


def launch_training(
    request: TrainRequest,
    *,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    poll_s: float = 0.1,
) -> TrainResult:
    """Run `train_gistnet(request)` over `training.processes` ranks and return rank 0's
    TrainResult."""
    processes = request.run.training.processes
    if processes == 1:
        return train_gistnet(
            request,
            on_progress=on_progress,
            should_cancel=should_cancel,
            on_checkpoint=on_checkpoint,
        )
    # Said here, before any process starts: each rank takes the GPU of its local rank.
    device = resolve_device(request.run.training.device)
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise DeviceError(
            f"training.processes is {processes} but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s): one process per GPU"
        )
    run_dir = Path(tempfile.mkdtemp(prefix="gistnet-ddp-"))
    spec = {"request": request.to_dict(), "launcher_pid": os.getpid()}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on this machine, on a free port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a dead rank fails the attempt; the job's retry resumes it
        f"--monitor-interval={MONITOR_INTERVAL_S}",
        "-m",
        "gistnet.launch",
        str(run_dir),
    ]
    with (run_dir / "launch.log").open("wb") as log:
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    offset, log_offsets, cancel_sent = 0, {}, False
    try:
        while launcher.poll() is None:
            offset = _relay(run_dir, offset, on_progress, on_checkpoint)
            _forward_rank_logs(run_dir, log_offsets)
            if not cancel_sent and should_cancel is not None and should_cancel():
                (run_dir / "cancel").touch()
                cancel_sent = True
            time.sleep(poll_s)
        _relay(run_dir, offset, on_progress, on_checkpoint)
        result_file = run_dir / "result.json"
        if launcher.returncode != 0 or not result_file.exists():
            _raise_rank_error(run_dir, launcher.returncode)
        result = json.loads(result_file.read_text())
        for name in _PATHS:
            result[name] = Path(result[name]) if result[name] is not None else None
        return TrainResult(**result)
    finally:
        if launcher.poll() is None:  # the caller gave up (an exception in a callback)
            launcher.terminate()
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        _forward_rank_logs(run_dir, log_offsets)  # the ranks' last lines, before any error
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------- a rank


def _launcher_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _RankLogFile(logging.Handler):
    """A rank's log records, one JSON object a line, for the launcher to log again
    (`_forward_rank_logs`)."""

    def __init__(self, path: Path):
        super().__init__(level=logging.INFO)
        self.path = path
        self.setFormatter(logging.Formatter("%(message)s"))  # with a traceback, if any

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps(
                {"level": record.levelno, "logger": record.name, "message": self.format(record)}
            )
            with self.path.open("a") as fh:
                fh.write(line + "\n")
        except Exception:
            self.handleError(record)


def _log_to_run_dir(run_dir: Path, rank: int) -> None:
    """This rank's logging into RUN_DIR/log-<rank>.jsonl: gistnet's INFO and up (a
    process started by torch.distributed.run has no logging set up: the root's WARNING
    would drop them), any other library's warnings and errors, Python's warnings."""
    logging.getLogger().addHandler(_RankLogFile(run_dir / f"log-{rank}.jsonl"))
    logging.getLogger("gistnet").setLevel(logging.INFO)
    logging.captureWarnings(True)


def rank_main(run_dir: str | Path) -> int:
    """One rank: train as the spec says; rank 0 writes events and the result."""
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "spec.json").read_text())
    ranks = Ranks.from_env()
    _log_to_run_dir(run_dir, ranks.rank)
    cancel_file = run_dir / "cancel"

    def on_progress(p) -> None:
        _append_event(run_dir, {"event": "progress", **asdict(p)})

    def on_checkpoint(path: Path) -> None:
        _append_event(run_dir, {"event": "checkpoint", "path": str(path)})

    def should_cancel() -> bool:
        # A launcher that is gone (its worker killed) cannot take the result: stop too.
        return cancel_file.exists() or not _launcher_alive(spec["launcher_pid"])

    try:
        result = train_gistnet(
            TrainRequest.from_dict(spec["request"]),
            on_progress=on_progress if ranks.is_main else None,
            should_cancel=should_cancel if ranks.is_main else None,
            on_checkpoint=on_checkpoint if ranks.is_main else None,
        )
    except GistNetError as err:
        log.error("training failed: %s: %s", type(err).__name__, err)
        (run_dir / f"error-{ranks.rank}.json").write_text(
            json.dumps({"type": type(err).__name__, "message": str(err)})
        )
        return 1
    except Exception:
        log.exception("training failed")  # torch.distributed.run reports the exit too
        raise
    if ranks.is_main:
        payload = asdict(result)
        payload.update({name: str(payload[name]) for name in _PATHS if payload[name] is not None})
        with atomic_write(run_dir / "result.json") as tmp:
            tmp.write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(rank_main(sys.argv[1]))
