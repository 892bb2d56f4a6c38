"""The library's bounds: a checkpoint's model is checked before it is built, and writing a
checkpoint on a full disk says the disk is full."""

from __future__ import annotations

import pytest
import torch

from gistnet.bounds import ModelBounds
from gistnet.checkpoint import load_checkpoint
from gistnet.config import validate_run_config
from gistnet.errors import BoundError, DiskFullError, ShardError
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.small_disk import small_disk


def _run_config():
    return validate_run_config(
        {"training": {"max_steps": 4, "batch_size": 4, "device": "cpu", "lr": 1e-3}}
    )


@pytest.fixture(scope="module")
def checkpoint(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bounds-model")
    return train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=out,
            settings=TrainSettings(run=_run_config()),
        )
    ).checkpoint_path


def _forged(checkpoint, tmp_path, **model_config):
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["model_config"] = {**payload["model_config"], **model_config}
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    return path


def test_a_checkpoint_past_the_layer_bound_is_refused_naming_it(checkpoint, tmp_path):
    forged = _forged(checkpoint, tmp_path, num_layers=100_000)
    with pytest.raises(BoundError, match=r"model_config.num_layers is 100000.*GISTNET_LIMITS"):
        load_checkpoint(forged)
    # The bound is the operator's: raised, the same file gets past it (to the next check).
    with pytest.raises(BoundError, match="GISTNET_WORKER_MEMORY_BYTES"):
        load_checkpoint(forged, bounds=ModelBounds(num_layers=10**6, memory_bytes=2**20))


def test_gistnet_limits_moves_the_library_bound(checkpoint, tmp_path, monkeypatch):
    forged = _forged(checkpoint, tmp_path, num_layers=3)
    with pytest.raises(ShardError, match="weights do not fit"):  # within the default bound
        load_checkpoint(forged)
    monkeypatch.setenv("GISTNET_LIMITS", '{"model.num_layers": 2}')
    with pytest.raises(BoundError, match="model_config.num_layers is 3; .* at most 2"):
        load_checkpoint(forged)


def test_a_resume_checkpoint_on_a_full_disk_says_the_disk_is_full(small_dataset, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        with pytest.raises(DiskFullError, match="is full: the resume checkpoint resume.pt"):
            train_gistnet(
                TrainRequest(
                    dataset=small_dataset / "train.arrow",
                    output_dir=tmp_path / "out",
                    settings=TrainSettings(run=_run_config()),
                    resume_path=disk / "resume.pt",
                    checkpoint_every=1,
                )
            )
        assert list(disk.iterdir()) == []  # the partial file is gone, its space free again


def test_a_checkpoint_on_a_full_disk_says_the_disk_is_full(small_dataset, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        with pytest.raises(DiskFullError, match="is full: the checkpoint gistnet.pt"):
            train_gistnet(
                TrainRequest(
                    dataset=small_dataset / "train.arrow",
                    output_dir=disk,
                    settings=TrainSettings(run=_run_config()),
                )
            )
