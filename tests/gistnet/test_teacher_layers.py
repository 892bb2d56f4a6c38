"""`teacher_layers`: GistNet reads the block's states of more teacher layers beside the
last. Which states those are, that training, evaluation, the encoder and the checkpoint
agree on them, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gistnet.checkpoint import read_checkpoint_info
from gistnet.errors import ConfigError
from gistnet.inference import GistEncoder
from gistnet.memory import gistnet_parameters
from gistnet.model import GistNet, GistNetConfig
from gistnet.shards import open_shard
from gistnet.substitution import full_log_probs_and_block_states, horizon_nll
from gistnet.teacher import check_teacher_layers, gistnet_inputs
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.gistnet.evaluation import evaluate
from tests.gistnet.test_substitution import BLOCK, short_substitution_run


def test_the_states_are_the_teachers_hidden_states_of_the_block(teacher, context):
    block = context[:, :BLOCK]
    config = GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=4, teacher_layers=(2, 0))
    inputs = gistnet_inputs(teacher, block, config)
    with torch.no_grad():
        out = teacher(input_ids=block, output_hidden_states=True)
    assert inputs["layer_states"].shape == (4, BLOCK, 2, 32)  # in the order named
    torch.testing.assert_close(inputs["layer_states"][:, :, 0], out.hidden_states[2])
    torch.testing.assert_close(inputs["layer_states"][:, :, 1], out.hidden_states[0])
    torch.testing.assert_close(inputs["hidden"], out.hidden_states[-1])
    assert "embeddings" not in inputs


def test_the_window_forward_gives_the_same_states_as_the_block_alone(teacher, context):
    """Training takes them from the full-context forward it runs anyway; the encoder and
    evaluation from the block alone: a causal teacher makes them the same numbers."""
    config = GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=4, teacher_layers=(0, 1))
    with torch.no_grad():
        log_probs, states, layers = full_log_probs_and_block_states(
            teacher, context, block_size=BLOCK, layers=config.teacher_layers
        )
        plain, plain_states, none = full_log_probs_and_block_states(
            teacher, context, block_size=BLOCK
        )
    alone = gistnet_inputs(teacher, context[:, :BLOCK], config)
    torch.testing.assert_close(layers, alone["layer_states"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states, alone["hidden"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_probs, plain)  # asking for layers changes nothing else
    torch.testing.assert_close(states, plain_states)
    assert none is None


def test_the_model_reads_each_layer_through_a_projection_of_its_own(teacher, context):
    config = GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=4, teacher_layers=(0, 1))
    model = GistNet(config)
    assert sum(p.numel() for p in model.parameters()) == gistnet_parameters(config)
    inputs = gistnet_inputs(teacher, context[:, :BLOCK], config)
    gists = model(**inputs)
    assert gists.shape == (4, 32)
    # the layer states matter: other states give other gists
    changed = {**inputs, "layer_states": inputs["layer_states"].flip(0)}
    assert not torch.allclose(model(**changed), gists)
    # blocks of several per example, (B, N, T, m, D)
    stacked = {k: torch.stack([v, v], dim=1) for k, v in inputs.items()}
    torch.testing.assert_close(model(**stacked)[:, 1], gists)


def test_missing_extra_or_misshapen_layer_states_are_refused(teacher, context):
    config = GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=4, teacher_layers=(1,))
    inputs = gistnet_inputs(teacher, context[:, :BLOCK], config)
    with pytest.raises(ConfigError, match="pass layer_states"):
        GistNet(config)(inputs["hidden"])
    with pytest.raises(ConfigError, match="without teacher_layers"):
        GistNet(GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=4))(**inputs)
    two = torch.cat([inputs["layer_states"]] * 2, dim=2)
    with pytest.raises(ConfigError, match="layer_states have shape"):
        GistNet(config)(inputs["hidden"], layer_states=two)


def test_a_layer_past_the_teachers_is_refused_with_the_range_to_use(teacher):
    with pytest.raises(ConfigError, match="numbered 0 to 2"):
        check_teacher_layers(teacher.config, (3,))  # the tiny teacher has 2 blocks
    check_teacher_layers(teacher.config, (0, 2))


def test_a_layers_model_is_trained_recorded_evaluated_and_served_alike(small_dataset, tmp_path):
    result = train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=tmp_path,
            settings=TrainSettings(
                run=short_substitution_run(
                    token_embeddings=True, teacher_layers=[0, 2], bos_sink=True
                )
            ),
        )
    )
    info = read_checkpoint_info(result.checkpoint_path)
    assert info["model_config"]["teacher_layers"] == [0, 2]

    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    assert encoder.model.config.teacher_layers == (0, 2)
    report = evaluate(
        result.checkpoint_path, small_dataset,
        split="validation", max_examples=12, bootstrap_samples=20, oracle_examples=4,
    )  # fmt: skip
    # the report's gist NLL is the encoder's gists read by the teacher, computed by hand
    shard = open_shard(small_dataset / "validation.arrow")
    total = len(shard.context_input_ids)
    rows = np.sort(np.random.default_rng(0).choice(total, 12, replace=False))
    context = torch.from_numpy(np.asarray(shard.context_input_ids[rows])).long()
    gists = encoder.encode(context[:, : encoder.block_size])
    bos = encoder.teacher.get_input_embeddings().weight[encoder.sink_token_id].float()
    with torch.no_grad():
        by_hand = horizon_nll(
            encoder.teacher, context, block_size=encoder.block_size, vectors=gists, sink=bos
        )
    assert report["conditions"]["gist"]["nll"]["value"] == pytest.approx(
        float(by_hand.mean()), abs=1e-4
    )


def test_a_layer_the_teacher_lacks_fails_before_training(small_dataset, tmp_path):
    # the sample teacher has 4 blocks: hidden states 0 to 4
    with pytest.raises(ConfigError, match="numbered 0 to 4"):
        train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=TrainSettings(run=short_substitution_run(teacher_layers=[5]))))  # fmt: skip
    assert not (tmp_path / "gistnet.pt").exists()
