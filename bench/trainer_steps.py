"""The trainer's own pieces, opened and stepped from a benchmark: a run as `train_gistnet`
opens it (`gistnet.train._open_run`: data, teacher, GistNet, optimizer, objective) and
timed calls of whatever step is given, the device synchronised around each."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def open_run(dataset: Path, config: dict, output: Path):
    """The trainer's own run (data, teacher, GistNet, optimizer, objective) for `config`."""
    from gistnet.config import validate_run_config
    from gistnet.distributed import Ranks
    from gistnet.train import _open_run
    from gistnet.train_request import TrainRequest, TrainSettings

    settings = TrainSettings(run=validate_run_config(config))
    request = TrainRequest(dataset=dataset, output_dir=output, settings=settings)
    return request, _open_run(request, Ranks.from_env())


def step_times(step, steps: int, device: torch.device) -> list[float]:
    """Seconds of `step(i)` for i = 0 ... steps: the first is the warm-up."""
    return [timed(lambda i=i: step(i), device) for i in range(steps + 1)]
