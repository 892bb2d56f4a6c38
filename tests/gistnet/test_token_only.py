"""Token-only datasets (`teacher_states: none`): token ids on disk, the teacher's states
computed inside the training step, and the same losses as a dataset with cached states."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from gistnet.config import validate_dataset_config, validate_run_config
from gistnet.data import prepare_dataset
from gistnet.datasets import open_split, read_metadata
from gistnet.substitution import full_log_probs_and_block_states, horizon_log_probs
from gistnet.teacher import load_teacher
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import SAMPLE_TEACHER, small_dataset_config
from tests.gistnet.evaluation import evaluate


@pytest.fixture(scope="module")
def token_dataset(tmp_path_factory):
    """The same config as the session's `small_dataset`, token ids only."""
    out = tmp_path_factory.mktemp("token_only")
    config = validate_dataset_config(small_dataset_config(teacher_states="none"))
    prepare_dataset(config, output_dir=out)
    return out


def run_config(objective: str, **training):
    base = {
        "batch_size": 8,
        "lr": 3e-3,
        "max_steps": 5,
        "device": "cpu",
        "eval_every": 5,
        "eval_examples": 16,
        "objective": objective,
    }
    return validate_run_config({"model": {"num_heads": 4}, "training": {**base, **training}})


def test_token_only_shards_hold_ids_only_and_metadata_records_the_teacher_width(
    token_dataset, small_dataset
):
    schema = pa.ipc.open_file(str(token_dataset / "train.arrow")).schema
    assert schema.names == [
        "input_ids",
        "attention_mask",
        "context_input_ids",
        "context_attention_mask",
    ]
    meta, cached = read_metadata(token_dataset), read_metadata(small_dataset)
    assert meta["teacher_states"] == "none" and cached["teacher_states"] == "cache"
    assert meta["teacher_hidden_size"] == cached["teacher_hidden_size"] == 128
    assert meta["fingerprint"] != cached["fingerprint"]  # the stored data differs
    tokens, states = open_split(token_dataset), open_split(small_dataset)
    assert not tokens.has_teacher_states and tokens.hidden_size is None
    np.testing.assert_array_equal(tokens.context_input_ids[:], states.context_input_ids[:])
    per_example = meta["splits"]["train"]["bytes"] / meta["splits"]["train"]["examples"]
    cached_per_example = cached["splits"]["train"]["bytes"] / cached["splits"]["train"]["examples"]
    assert per_example < 600 and cached_per_example / per_example > 30


def test_states_taken_from_the_window_equal_the_cached_states(small_dataset):
    data = open_split(small_dataset, "validation")
    teacher = load_teacher(str(SAMPLE_TEACHER), device="cpu")
    rows = np.arange(min(24, data.num_examples))
    context = torch.from_numpy(data.context_input_ids[rows]).long()
    with torch.no_grad():
        log_probs, states, none = full_log_probs_and_block_states(teacher, context, block_size=32)
        plain = horizon_log_probs(teacher, context, block_size=32)
    np.testing.assert_allclose(states.numpy(), data.teacher_hidden[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(log_probs, plain)  # the hook changes nothing else
    assert none is None  # no further teacher layers asked for


@pytest.mark.parametrize("objective", ["mse", "substitution"])
def test_training_on_token_only_gives_the_losses_of_cached_states(
    objective, token_dataset, small_dataset, tmp_path
):
    cached = train_gistnet(
        TrainRequest(
            dataset=small_dataset,
            output_dir=tmp_path / "c",
            settings=TrainSettings(run=run_config(objective)),
        )
    )
    tokens = train_gistnet(
        TrainRequest(
            dataset=token_dataset,
            output_dir=tmp_path / "t",
            settings=TrainSettings(run=run_config(objective)),
        )
    )
    want = [h["loss"] for h in cached.history]
    np.testing.assert_allclose([h["loss"] for h in tokens.history], want, rtol=1e-5)
    assert tokens.val_loss == pytest.approx(cached.val_loss, rel=1e-5)
    assert len(want) == 5 and len(set(want)) > 1


def test_evaluation_scores_a_token_only_dataset_as_its_cached_twin(
    token_dataset, small_dataset, tmp_path
):
    trained = train_gistnet(
        TrainRequest(
            dataset=small_dataset,
            output_dir=tmp_path,
            settings=TrainSettings(run=run_config("mse")),
        )
    )
    reports = [
        evaluate(
            trained.checkpoint_path,
            folder,
            device="cpu",
            max_examples=12,
            bootstrap_samples=10,
        )
        for folder in (small_dataset, token_dataset)
    ]
    assert reports[1]["dataset"]["teacher_states"] == "none"
    for name in ("gist", "swapped", "mean", "full"):
        assert reports[1]["conditions"][name]["nll"]["value"] == pytest.approx(
            reports[0]["conditions"][name]["nll"]["value"], rel=1e-5
        )
