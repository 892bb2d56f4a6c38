"""gistnet.checkpoint: the trained model's checkpoint and the resume checkpoint of a run in
progress, each read back as it was written and refused when it is not what it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gistnet.checkpoint import (
    load_checkpoint,
    load_resume,
    read_checkpoint_info,
    save_checkpoint,
    save_resume,
)
from gistnet.datasets import read_metadata
from gistnet.errors import ShardError
from gistnet.model import GistNet, GistNetConfig
from gistnet.shards import open_shard
from gistnet.train import batch_indices

BATCH = 8


@pytest.fixture(scope="module")
def shard(small_dataset):
    return open_shard(small_dataset / "train.arrow")


def gistnet_for(shard, *, seed: int = 0, **config) -> GistNet:
    torch.manual_seed(seed)
    return GistNet(
        GistNetConfig(hidden_size=shard.hidden_size, block_size=shard.block_size, **config)
    )


def train_step(model: GistNet, optimizer, shard, step: int) -> float:
    """One mse step on the batch `step` draws, as the training loop draws it."""
    idx = batch_indices(step, BATCH, shard.num_examples, seed=0)
    states = torch.from_numpy(np.ascontiguousarray(shard.teacher_hidden[idx]))
    target = torch.from_numpy(np.ascontiguousarray(shard.gist_target[idx]))
    loss = F.mse_loss(model(states), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def save_trained(path, model, small_dataset):
    meta = read_metadata(small_dataset)
    return save_checkpoint(
        path,
        model=model,
        training_config={"max_steps": 2},
        metrics={"final_loss": 0.5},
        dataset={"name": meta["dataset_name"], "fingerprint": meta["fingerprint"]},
        teacher={"model": meta["teacher_model"], "dtype": "float32"},
        tokenizer=meta["tokenizer"],
    )


def test_a_saved_checkpoint_loads_as_the_same_model_with_its_record(small_dataset, shard, tmp_path):
    model = gistnet_for(shard, num_layers=2)
    path = save_trained(tmp_path / "gistnet.pt", model, small_dataset)
    loaded, info = load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    states = torch.from_numpy(shard.teacher_hidden[:4].copy())
    with torch.no_grad():
        torch.testing.assert_close(loaded(states), model.eval()(states), rtol=0, atol=0)
    meta = read_metadata(small_dataset)
    assert (info["teacher"]["model"], info["teacher"]["dtype"]) == (
        meta["teacher_model"],
        "float32",
    )
    assert info["tokenizer"] == meta["tokenizer"] and info["metrics"] == {"final_loss": 0.5}
    assert (info["hidden_size"], info["block_size"]) == (shard.hidden_size, shard.block_size)
    assert read_checkpoint_info(path) == info


def test_a_resumed_run_continues_with_the_same_step_optimizer_state_and_batches(shard, tmp_path):
    model = gistnet_for(shard)
    optimizer = model.optimizer(lr=3e-3, weight_decay=0.0)
    history = [{"step": s + 1, "loss": train_step(model, optimizer, shard, s)} for s in range(3)]
    path = save_resume(
        tmp_path / "resume.pt", model=model, optimizer=optimizer, step=3, history=history
    )

    fresh = gistnet_for(shard, seed=1)  # other initial weights: all of them must come back
    fresh_optimizer = fresh.optimizer(lr=3e-3, weight_decay=0.0)
    step, restored = load_resume(path, model=fresh, optimizer=fresh_optimizer)
    assert (step, restored) == (3, history)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 3
    # The next step draws the same batch from the same state: the same loss and weights.
    assert train_step(fresh, fresh_optimizer, shard, step) == train_step(
        model, optimizer, shard, step
    )
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(
    small_dataset, shard, tmp_path
):
    path = save_trained(tmp_path / "gistnet.pt", gistnet_for(shard), small_dataset)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["num_layers"] = 2  # the file claims a layer its weights lack
    torch.save(payload, path)
    with pytest.raises(ShardError, match="its weights do not fit the model its config describes"):
        load_checkpoint(path)


def test_a_resume_checkpoint_of_another_model_is_refused(shard, tmp_path):
    model = gistnet_for(shard)
    optimizer = model.optimizer(lr=1e-3, weight_decay=0.0)
    path = save_resume(tmp_path / "resume.pt", model=model, optimizer=optimizer, step=1, history=[])
    wider = gistnet_for(shard, num_layers=2)
    with pytest.raises(ShardError, match="(?s)does not fit this run's model.*delete it"):
        load_resume(path, model=wider, optimizer=wider.optimizer(lr=1e-3, weight_decay=0.0))
    # Neither kind is taken for the other.
    with pytest.raises(ShardError, match="is not a GistNet checkpoint"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_not_taken_for_a_finished_one(small_dataset, shard, tmp_path):
    path = save_trained(tmp_path / "gistnet.pt", gistnet_for(shard), small_dataset)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # what a copy cut short leaves
    with pytest.raises(ShardError, match="is not a GistNet checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ShardError, match="is not a GistNet checkpoint"):
        read_checkpoint_info(path)


def test_a_save_that_fails_midway_leaves_the_last_checkpoint_whole(small_dataset, shard, tmp_path):
    model = gistnet_for(shard)
    path = save_trained(tmp_path / "gistnet.pt", model, small_dataset)
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle|Can't"):
        # A value torch.save cannot write fails the save after it has begun writing.
        save_checkpoint(
            path,
            model=gistnet_for(shard, seed=1),
            training_config={},
            metrics={"unwritable": lambda: None},
            dataset={},
            teacher={},
            tokenizer=None,
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gistnet.pt"]  # no partial left
    load_checkpoint(path)
