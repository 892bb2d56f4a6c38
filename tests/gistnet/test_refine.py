"""Refined gists (gistnet.refine): the continuations the teacher samples, the search that
moves a gist toward them, and the refined condition in the evaluation and the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gistnet.errors import ConfigError
from gistnet.eval.report import format_table
from gistnet.inference import GistEncoder
from gistnet.refine import RefineSettings, refine_gists, sample_continuations
from gistnet.shards import open_shard
from gistnet.substitution import drop_token_id, drop_vector, horizon_log_probs, horizon_nll
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.gistnet.evaluation import evaluate
from tests.gistnet.test_substitution import BLOCK, short_substitution_run


def _greedy_without_cache(teacher, blocks, tokens):
    sequence = blocks
    for _ in range(tokens):
        with torch.no_grad():
            logits = teacher(input_ids=sequence, use_cache=False).logits[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    return sequence


def test_sampling_with_the_cache_draws_from_the_teachers_next_token_distribution(teacher, context):
    blocks = context[:, :BLOCK]
    # At a temperature near 0 a draw is the most likely token: greedy decoding, which a
    # forward over the whole sequence at every step gives without any cache.
    cold = sample_continuations(teacher, blocks, tokens=6, temperature=1e-4)
    assert torch.equal(cold, _greedy_without_cache(teacher, blocks, 6))

    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return sample_continuations(teacher, blocks, tokens=6, generator=generator)

    first = draw(0)
    assert first.shape == (4, BLOCK + 6) and torch.equal(first[:, :BLOCK], blocks)
    assert torch.equal(first, draw(0))  # seeded: the same blocks give the same draws
    assert not torch.equal(first, draw(1))


def _mean_kl(teacher, context, vectors, samples, sink=None):
    with torch.no_grad():
        full = horizon_log_probs(teacher, context, block_size=BLOCK)
        read = horizon_log_probs(
            teacher, context, block_size=BLOCK,
            vectors=vectors.repeat_interleave(samples, dim=0), sink=sink,
        )  # fmt: skip
    kl = F.kl_div(read, full, reduction="none", log_target=True).sum(-1).mean(-1)
    return kl.view(len(vectors), samples).mean(-1)


@pytest.mark.parametrize("shape", [(4, 32), (4, 2, 32)])
def test_refinement_lowers_the_kl_on_the_blocks_own_continuations(teacher, context, shape):
    blocks = context[:, :BLOCK]
    init = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    settings = RefineSettings(samples=3, steps=30, seed=5)
    refined = refine_gists(teacher, blocks, init, settings=settings, tokens=8)
    assert refined.shape == init.shape and refined.dtype == torch.float32

    # The continuations it fitted, drawn again with its seed: every block's mean KL falls.
    generator = torch.Generator().manual_seed(5)
    drawn = sample_continuations(
        teacher, blocks.repeat_interleave(3, dim=0), tokens=8,
        temperature=settings.temperature, generator=generator,
    )  # fmt: skip
    before = _mean_kl(teacher, drawn, init, 3)
    after = _mean_kl(teacher, drawn, refined, 3)
    assert (after < before).all()
    # deterministic, and batched or one block at a time alike up to the sampler's stream
    again = refine_gists(teacher, blocks, init, settings=settings, tokens=8)
    assert torch.equal(refined, again)


def test_refinement_works_under_a_callers_inference_mode(teacher, context):
    blocks = context[:, :BLOCK]
    init = torch.randn(4, 32, generator=torch.Generator().manual_seed(4))
    settings = RefineSettings(samples=2, steps=5, seed=2)
    expected = refine_gists(teacher, blocks, init, settings=settings, tokens=6)
    with torch.inference_mode():
        inside = refine_gists(teacher, blocks.clone(), init.clone(), settings=settings, tokens=6)
    assert torch.equal(inside, expected)


def test_refinement_reads_the_gists_after_the_sink_of_a_bos_sink_model(teacher, context):
    blocks = context[:, :BLOCK]
    init = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    bos = drop_vector(teacher, drop_token_id(None, teacher))
    settings = RefineSettings(samples=2, steps=20, seed=1)
    sunk = refine_gists(teacher, blocks, init, settings=settings, tokens=8, sink=bos)
    plain = refine_gists(teacher, blocks, init, settings=settings, tokens=8)
    assert not torch.allclose(sunk, plain)
    drawn = sample_continuations(
        teacher, blocks.repeat_interleave(2, dim=0), tokens=8,
        temperature=settings.temperature, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert (_mean_kl(teacher, drawn, sunk, 2, bos) < _mean_kl(teacher, drawn, init, 2, bos)).all()


def test_settings_out_of_range_are_refused_with_what_was_wrong(teacher, context):
    with pytest.raises(ConfigError, match="samples must be 1 to 64; got 0"):
        RefineSettings(samples=0)
    with pytest.raises(ConfigError, match="steps must be 1 to 1000.*temperature must be 0.01 to"):
        RefineSettings(steps=5000, temperature=1e-40)  # its logits would overflow float32
    with pytest.raises(ConfigError, match="continuations of at least 1 token; got 0"):
        refine_gists(
            teacher, context[:, :BLOCK], torch.zeros(4, 32), settings=RefineSettings(), tokens=0
        )
    with pytest.raises(ConfigError, match="3 starting vectors for 4 blocks"):
        refine_gists(
            teacher, context[:, :BLOCK], torch.zeros(3, 32), settings=RefineSettings(), tokens=4
        )


def test_the_evaluation_scores_refined_gists_beside_the_gist(small_dataset, tmp_path):
    result = train_gistnet(TrainRequest(dataset=small_dataset / "train.arrow", output_dir=tmp_path, settings=TrainSettings(run=short_substitution_run(bos_sink=True))))  # fmt: skip
    settings = RefineSettings(samples=2, steps=5, seed=0)
    report = evaluate(
        result.checkpoint_path, small_dataset, split="validation",
        max_examples=10, bootstrap_samples=20, oracle_examples=4, refine=settings,
    )  # fmt: skip
    conditions = report["conditions"]
    assert {"refined", "swapped_refined"} <= set(conditions)
    assert report["refine"]["samples"] == 2 and report["refine"]["tokens"] == 32
    for key in (
        "refined_minus_mean_gap_recovered",
        "swapped_refined_over_refined_gap_recovered",
    ):
        assert report["comparisons"][key]["value"] is not None
    bars = report["quality_bars"]
    assert "refined_gap_recovered_at_least_0.7" in bars
    assert "swapped_refined_below_third_of_refined" in bars
    assert "refined_at_least_90pct_of_oracle" in bars
    oracle = report["oracle"]
    assert "refined" in oracle["conditions"]
    assert oracle["comparisons"]["refined_over_oracle_gap_recovered"]["value"] is not None
    assert "GR(refined) / GR(oracle)" in format_table(report)

    # The report's refined NLL is the encoder's refined gists read after BOS, by hand.
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    shard = open_shard(small_dataset / "validation.arrow")
    rows = np.sort(np.random.default_rng(0).choice(len(shard.context_input_ids), 10, replace=False))
    context = torch.from_numpy(np.asarray(shard.context_input_ids[rows])).long()
    refined = encoder.encode(context[:, : encoder.block_size], refine=settings)
    plain = encoder.encode(context[:, : encoder.block_size])
    assert refined.shape == plain.shape and not torch.allclose(refined, plain)
    bos = drop_vector(encoder.teacher, encoder.sink_token_id)
    with torch.no_grad():
        by_hand = horizon_nll(
            encoder.teacher, context, block_size=encoder.block_size, vectors=refined, sink=bos
        )
    value = conditions["refined"]["nll"]["value"]
    assert value == pytest.approx(float(by_hand.mean()), abs=1e-4)
