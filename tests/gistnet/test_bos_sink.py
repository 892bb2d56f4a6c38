"""`bos_sink`: the teacher reads the gists after its BOS embedding. Where the vectors stand,
that training, evaluation and the encoder all read them that way, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gistnet.checkpoint import read_checkpoint_info
from gistnet.errors import ConfigError
from gistnet.eval.conditions import evaluate_conditions
from gistnet.inference import GistEncoder
from gistnet.model import GistNetConfig
from gistnet.shards import open_shard
from gistnet.substitution import (
    SubstitutionLoss,
    drop_token_id,
    drop_vector,
    horizon_nll,
    substituted_inputs,
)
from gistnet.teacher import load_tokenizer
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.gistnet.evaluation import evaluate
from tests.gistnet.test_substitution import BLOCK, HORIZON, make_teacher, short_substitution_run


@pytest.mark.parametrize("k", [1, 3])
def test_the_sink_stands_one_position_before_the_vectors(teacher, context, k):
    vectors = torch.randn(4, k, 32)
    sink = torch.randn(32)
    embeds, positions = substituted_inputs(
        teacher, context, block_size=BLOCK, vectors=vectors, sink=sink
    )
    assert embeds.shape == (4, 1 + k + HORIZON - BLOCK, 32)
    assert torch.equal(embeds[:, 0], sink.expand(4, -1))
    assert torch.equal(embeds[:, 1 : k + 1], vectors)
    # h keeps its positions; the vectors keep the block's last k, the sink the one before
    assert torch.equal(positions, torch.arange(BLOCK - k - 1, HORIZON).expand(4, -1))


def test_the_sink_changes_what_the_teacher_predicts(teacher, context):
    vector = torch.randn(4, 32)
    bos = drop_vector(teacher, drop_token_id(None, teacher))
    alone = horizon_nll(teacher, context, block_size=BLOCK, vectors=vector)
    after = horizon_nll(teacher, context, block_size=BLOCK, vectors=vector, sink=bos)
    assert not torch.allclose(alone, after)


def test_a_sink_with_no_room_before_the_vectors_is_refused(teacher, context):
    with pytest.raises(ConfigError, match="positions"):
        substituted_inputs(
            teacher, context, block_size=BLOCK, vectors=torch.randn(4, BLOCK, 32),
            sink=torch.randn(32),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="bos_sink"):
        GistNetConfig(hidden_size=64, block_size=4, num_heads=4, gists_per_block=4, bos_sink=True)


def test_the_loss_trains_the_vectors_as_read_after_bos(teacher, context):
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK, bos_sink=True)
    vectors = torch.randn(4, 32, requires_grad=True)
    loss, stats = loss_fn(vectors, context)
    bos = drop_vector(teacher, drop_token_id(None, teacher))
    from gistnet.substitution import horizon_log_probs

    with torch.no_grad():
        full = horizon_log_probs(teacher, context, block_size=BLOCK)
        after = horizon_log_probs(teacher, context, block_size=BLOCK, vectors=vectors, sink=bos)
        expected = torch.nn.functional.kl_div(after, full, reduction="none", log_target=True)
    torch.testing.assert_close(loss.detach(), expected.sum(-1).mean())
    loss.backward()
    assert vectors.grad.abs().sum() > 0


def test_evaluation_reads_every_vector_condition_after_bos_but_drop(teacher, context):
    gists = torch.randn(4, 32)
    plain = evaluate_conditions(teacher, context, block_size=BLOCK, gist_vectors=gists)
    sunk = evaluate_conditions(
        teacher, context, block_size=BLOCK, gist_vectors=gists, bos_sink=True
    )
    bos = drop_vector(teacher, drop_token_id(None, teacher))
    expected = horizon_nll(teacher, context, block_size=BLOCK, vectors=gists, sink=bos)
    torch.testing.assert_close(torch.from_numpy(sunk["gist"]), expected, atol=1e-5, rtol=1e-5)
    # drop is BOS alone either way; full never reads a vector
    assert (sunk["drop"] == plain["drop"]).all() and (sunk["full"] == plain["full"]).all()
    assert not (sunk["mean"] == plain["mean"]).all()


def test_a_sink_model_records_it_and_is_evaluated_and_served_that_way(small_dataset, tmp_path):
    result = train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=TrainSettings(run=short_substitution_run(bos_sink=True))))  # fmt: skip
    assert read_checkpoint_info(result.checkpoint_path)["model_config"]["bos_sink"] is True

    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    tokenizer = load_tokenizer(encoder.info["tokenizer"])
    assert encoder.bos_sink is True
    assert encoder.sink_token_id == tokenizer.bos_token_id

    report = evaluate(
        result.checkpoint_path, small_dataset,
        split="validation", max_examples=12, bootstrap_samples=20, oracle_examples=4,
    )  # fmt: skip
    assert report["bos_sink"] is True
    # the report's gist NLL is the gists read after BOS, computed by hand
    shard = open_shard(small_dataset / "validation.arrow")
    # the evaluation's seeded subset (seed 0), as evaluate_gistnet draws it
    total = len(shard.context_input_ids)
    rows = np.sort(np.random.default_rng(0).choice(total, 12, replace=False))
    context = torch.from_numpy(np.asarray(shard.context_input_ids[rows])).long()
    block = encoder.block_size
    gists = encoder.encode(context[:, :block])
    bos = drop_vector(encoder.teacher, encoder.sink_token_id)
    with torch.no_grad():
        by_hand = horizon_nll(encoder.teacher, context, block_size=block, vectors=gists, sink=bos)
    gist_nll = report["conditions"]["gist"]["nll"]["value"]
    assert gist_nll == pytest.approx(float(by_hand.mean()), abs=1e-4)
    oracle = report["oracle"]["conditions"]
    assert oracle["oracle"]["nll"]["value"] <= oracle["gist"]["nll"]["value"] + 1e-6


def test_a_teacher_without_bos_or_eos_trains_without_the_sink_and_refuses_it(context):
    bare = make_teacher(bos=None, eos=None)
    loss, _ = SubstitutionLoss(bare, block_size=BLOCK)(torch.randn(4, 32), context)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="neither a BOS nor an EOS"):
        SubstitutionLoss(bare, block_size=BLOCK, bos_sink=True)
