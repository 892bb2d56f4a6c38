"""Training over two processes with DDP (gloo on the CPU), launched by torch.distributed.run:
the same losses as one process, cancel reaching every rank, and a killed rank failing the
run so that running it again resumes from the last checkpoint."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from gistnet.checkpoint import load_checkpoint
from gistnet.config import validate_run_config
from gistnet.errors import Cancelled, ConfigError
from gistnet.launch import TrainingProcessFailed, launch_training
from gistnet.shards import open_shard
from gistnet.train_request import TrainRequest, TrainSettings

pytestmark = [pytest.mark.slow]

STEPS = 10


def run_config(processes: int, **training):
    base = {
        "batch_size": 16,
        "lr": 3e-3,
        "max_steps": STEPS,
        "warmup": 2,
        "device": "cpu",
        "eval_every": 5,
        "eval_examples": 64,
        "processes": processes,
    }
    return validate_run_config({"model": {"num_heads": 4}, "training": {**base, **training}})


def rank_pids(rank: int) -> list[int]:
    """Training processes of the given rank started (indirectly) by this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"gistnet.launch" in cmdline and f"RANK={rank}".encode() in environ:
            if _descends_from(int(entry.name), os.getpid()):
                found.append(int(entry.name))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _rank_lines(caplog) -> dict[str, list[tuple[str, str]]]:
    """The launcher's records of each rank's lines: rank -> [(level, message after the tag)]."""
    lines: dict[str, list[tuple[str, str]]] = {}
    for record in caplog.records:
        rank, sep, message = record.getMessage().partition(": ")
        if sep and rank.startswith("rank "):
            lines.setdefault(rank, []).append((record.levelname, message))
    return lines


def test_two_processes_give_the_losses_and_weights_of_one(small_dataset, tmp_path, caplog):
    one = launch_training(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "one",
            settings=TrainSettings(run=run_config(1)),
        )
    )
    seen = []
    with caplog.at_level(logging.INFO, logger="gistnet"):
        two = launch_training(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path / "two",
                settings=TrainSettings(run=run_config(2)),
            ),
            on_progress=seen.append,
        )
    # Each rank's lines reach the launcher's logging, tagged with the rank.
    lines = _rank_lines(caplog)
    assert sorted(lines) == ["rank 0", "rank 1"]
    examples = open_shard(small_dataset / "train.arrow").num_examples
    for rank in ("rank 0", "rank 1"):
        assert lines[rank][0] == (
            "INFO",
            "training steps 1 to 10 in batches of 16 (8 of each in this process) on cpu, "
            f"from {examples} examples",
        )
        assert lines[rank][-1][1].startswith("trained to step 10: final loss ")
    assert ("INFO", "step 5 of 10: validation loss") in [
        (level, m[:29]) for level, m in lines["rank 0"]
    ]  # rank 0 alone scores the validation split
    losses_one = [h["loss"] for h in one.history]
    losses_two = [h["loss"] for h in two.history]
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4, atol=1e-6)
    assert two.val_loss == pytest.approx(one.val_loss, rel=1e-4)
    # Rank 0 alone reports, once per step, and writes the one checkpoint.
    assert [p.step for p in seen] == list(range(1, STEPS + 1))
    a, _ = load_checkpoint(one.checkpoint_path)
    b, info = load_checkpoint(two.checkpoint_path)
    assert info["training_config"]["processes"] == 2
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=1e-3, atol=1e-5)
    assert rank_pids(0) == rank_pids(1) == []  # every rank has exited


def test_cancel_reaches_every_rank(small_dataset, tmp_path):
    steps = []

    def should_cancel() -> bool:
        return len(steps) >= 3

    with pytest.raises(Cancelled, match="cancelled at step"):
        launch_training(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path,
                settings=TrainSettings(run=run_config(2, max_steps=100_000)),
            ),
            on_progress=steps.append,
            should_cancel=should_cancel,
        )
    assert len(steps) < 100
    assert rank_pids(0) == rank_pids(1) == []


def test_killed_rank_fails_the_run_and_the_next_run_resumes_to_the_same_losses(
    small_dataset, tmp_path
):
    resume = tmp_path / "resume.pt"
    published = []

    def kill_rank_one(progress) -> None:
        # After the checkpoint of step 5 exists: SIGKILL the second process.
        if progress.step == 6:
            for pid in rank_pids(1):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(TrainingProcessFailed, match="a training process died"):
        launch_training(
            TrainRequest(
                dataset=small_dataset / "train.arrow",
                output_dir=tmp_path / "out",
                settings=TrainSettings(run=run_config(2, max_steps=40)),
                resume_path=resume,
                checkpoint_every=5,
            ),
            on_progress=kill_rank_one,
            on_checkpoint=published.append,
        )
    assert resume.is_file() and published and published[0] == resume

    resumed = launch_training(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "out",
            settings=TrainSettings(run=run_config(2, max_steps=40)),
            resume_path=resume,
            checkpoint_every=5,
        )
    )
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step >= 5
    uninterrupted = launch_training(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path / "uninterrupted",
            settings=TrainSettings(run=run_config(1, max_steps=40)),
        )
    )
    np.testing.assert_allclose(
        [h["loss"] for h in resumed.history],
        [h["loss"] for h in uninterrupted.history],
        rtol=1e-4,
        atol=1e-6,
    )


def test_two_processes_train_a_token_only_split_of_several_shards_as_one_does(tmp_path):
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from tests.conftest import small_dataset_config

    config = small_dataset_config(teacher_states="none")
    config["splits"]["train"]["shards"] = 3
    prepare_dataset(validate_dataset_config(config), output_dir=tmp_path / "data")
    runs = [
        launch_training(
            TrainRequest(
                dataset=tmp_path / "data",
                output_dir=tmp_path / str(processes),
                settings=TrainSettings(
                    split="train", run=run_config(processes, max_steps=3, eval_every=3)
                ),
            )
        )
        for processes in (1, 2)
    ]
    one, two = ([h["loss"] for h in r.history] for r in runs)
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert runs[1].val_loss == pytest.approx(runs[0].val_loss, rel=1e-4)


def test_a_ranks_error_reaches_the_launchers_log_tagged_with_its_rank(
    small_dataset, tmp_path, caplog
):
    # Each rank finds the model too wide for the dataset's states when it opens the run.
    run = run_config(2)
    run = validate_run_config({**run.model_dump(mode="json"), "model": {"hidden_size": 256}})
    with caplog.at_level(logging.INFO, logger="gistnet"):
        with pytest.raises(ConfigError, match="hidden_size is 256"):
            launch_training(
                TrainRequest(
                    dataset=small_dataset / "train.arrow",
                    output_dir=tmp_path,
                    settings=TrainSettings(run=run),
                )
            )
    lines = _rank_lines(caplog)
    for rank in ("rank 0", "rank 1"):
        ((level, message),) = lines[rank]
        assert level == "ERROR" and message.startswith("training failed: ConfigError: ")
        assert "hidden_size is 256 but the dataset's teacher_hidden_size is 128" in message
