"""k vectors per block (`gists_per_block`): shapes, where the teacher reads them, training,
the checkpoint, the engine, and the evaluation's conditions; and GistNet reading the
block's token embeddings beside its states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gistnet.checkpoint import load_checkpoint, read_checkpoint_info
from gistnet.config import validate_run_config
from gistnet.errors import ConfigError
from gistnet.inference import GistEncoder
from gistnet.model import GistNet, GistNetConfig
from gistnet.shards import open_shard
from gistnet.substitution import SubstitutionLoss, horizon_nll, substituted_inputs
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.gistnet.test_substitution import BLOCK, HORIZON


@pytest.mark.parametrize("k", [2, 4])
def test_gistnet_emits_k_vectors_per_block(k):
    torch.manual_seed(0)
    model = GistNet(GistNetConfig(hidden_size=64, block_size=32, num_heads=4, gists_per_block=k))
    states = torch.randn(3, 5, 32, 64)
    gists = model(states)
    assert gists.shape == (3, 5, k, 64)
    torch.testing.assert_close(model(states[:, 0]), gists[:, 0])  # (B, T, D) -> (B, k, D)
    # the k queries differ from the start, so the vectors do too
    assert not torch.allclose(gists[..., 0, :], gists[..., 1, :])


def test_one_vector_per_block_keeps_the_old_shape():
    model = GistNet(GistNetConfig(hidden_size=64, block_size=32, num_heads=4))
    assert model(torch.randn(3, 5, 32, 64)).shape == (3, 5, 64)
    assert model(torch.randn(3, 32, 64)).shape == (3, 64)


def test_k_vectors_stand_at_the_blocks_last_k_positions(teacher, context):
    vectors = torch.randn(4, 3, 32)
    embeds, positions = substituted_inputs(teacher, context, block_size=BLOCK, vectors=vectors)
    assert embeds.shape == (4, 3 + HORIZON - BLOCK, 32)
    assert torch.equal(embeds[:, :3], vectors)
    assert torch.equal(positions, torch.arange(BLOCK - 3, HORIZON).expand(4, -1))


def test_a_block_replaced_by_its_own_token_embeddings_scores_exactly_like_full(teacher, context):
    # k = block_size vectors that are the block's own embeddings at the block's own
    # positions are the `full` input: the predictions of h must not move.
    block = 4
    own = teacher.get_input_embeddings()(context[:, :block])  # (B, 4, D)
    full = horizon_nll(teacher, context, block_size=block)
    substituted = horizon_nll(teacher, context, block_size=block, vectors=own)
    torch.testing.assert_close(substituted, full, atol=1e-5, rtol=1e-5)
    # and the last two tokens alone, at positions 2 and 3, differ from full only by the
    # first two tokens' absence
    partial = horizon_nll(teacher, context, block_size=block, vectors=own[:, 2:])
    assert not torch.allclose(partial, full)


def test_the_substitution_loss_trains_k_vectors(teacher, context):
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK)
    vectors = torch.zeros(4, 2, 32, requires_grad=True)
    optimizer = torch.optim.Adam([vectors], lr=0.05)
    first = None
    for _ in range(15):
        loss, _ = loss_fn(vectors, context)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first
    assert vectors.grad[:, 0].abs().sum() > 0 and vectors.grad[:, 1].abs().sum() > 0


def _run(**model):
    return validate_run_config(
        {
            "model": {"num_heads": 4, **model},
            "training": {
                "objective": "substitution",
                "batch_size": 8,
                "lr": 3e-3,
                "max_steps": 4,
                "device": "cpu",
                "eval_every": 4,
                "eval_examples": 8,
            },
        }
    )


def test_k_vectors_train_round_trip_and_are_served_by_the_engine(small_dataset, tmp_path):
    result = train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=TrainSettings(run=_run(gists_per_block=2))))  # fmt: skip
    info = read_checkpoint_info(result.checkpoint_path)
    assert info["model_config"]["gists_per_block"] == 2
    model, _ = load_checkpoint(result.checkpoint_path)
    assert model.config.gists_per_block == 2

    shard = open_shard(small_dataset / "validation.arrow")
    with torch.no_grad():
        from_states = model(torch.from_numpy(shard.teacher_hidden[:5].copy()))
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    from_tokens = encoder.encode(torch.from_numpy(shard.input_ids[:5].copy()).long())
    assert from_tokens.shape == (5, 2, shard.hidden_size) and encoder.gists_per_block == 2
    torch.testing.assert_close(from_tokens, from_states, atol=1e-5, rtol=1e-5)


def test_mse_with_k_vectors_regresses_each_onto_its_share_of_the_block(small_dataset, tmp_path):
    run = validate_run_config(
        {
            "model": {"num_heads": 4, "gists_per_block": 4},
            "training": {"batch_size": 8, "max_steps": 3, "device": "cpu", "eval_every": 3},
        }
    )
    result = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path,
            settings=TrainSettings(run=run),
        )
    )
    assert np.isfinite(result.final_loss)
    bad = validate_run_config({"model": {"gists_per_block": 3}, "training": {"device": "cpu"}})
    with pytest.raises(ConfigError, match="divisor of 32"):
        train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path / "bad", settings=TrainSettings(run=bad)))  # fmt: skip


def test_token_embeddings_are_read_beside_the_states(small_dataset, tmp_path):
    result = train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=TrainSettings(run=_run(token_embeddings=True))))  # fmt: skip
    model, info = load_checkpoint(result.checkpoint_path)
    assert info["model_config"]["token_embeddings"] is True
    shard = open_shard(small_dataset / "validation.arrow")
    states = torch.from_numpy(shard.teacher_hidden[:3].copy())
    with pytest.raises(ConfigError, match="embeddings="):
        model(states)
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    ids = torch.from_numpy(shard.input_ids[:3].copy()).long()
    with torch.no_grad():
        expected = model(states, embeddings=encoder.teacher.get_input_embeddings()(ids))
    torch.testing.assert_close(encoder.encode(ids), expected, atol=1e-5, rtol=1e-5)
