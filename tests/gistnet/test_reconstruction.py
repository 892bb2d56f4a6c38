"""The reconstruction NLL through the frozen teacher (`training.reconstruction_weight`,
`training.reconstruction_steps`): what it scores, and how training uses it."""

from __future__ import annotations

import pytest
import torch

from gistnet.config import validate_run_config
from gistnet.substitution import SubstitutionLoss, reconstruction_nll
from gistnet.train import train_gistnet
from tests.gistnet.test_substitution import BLOCK


def test_the_teacher_reads_the_vectors_then_the_block_and_predicts_every_block_token(
    teacher, context
):
    block = context[:, :BLOCK]
    vectors = torch.randn(4, 2, 32)
    nll = reconstruction_nll(teacher, block, vectors=vectors)
    assert nll.shape == (4, BLOCK) and torch.isfinite(nll).all()
    # by hand: inputs [v1, v2, b_0 .. b_{T-2}] at positions 0 .., the last vector predicts b_0
    embeds = torch.cat([vectors, teacher.get_input_embeddings()(block[:, :-1])], dim=1)
    with torch.no_grad():
        logits = teacher(inputs_embeds=embeds).logits[:, 1:]
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), block.flatten(), reduction="none"
    ).view(4, BLOCK)
    torch.testing.assert_close(nll.detach(), expected, atol=1e-5, rtol=1e-5)
    # a sink stands first and changes what the teacher predicts
    sunk = reconstruction_nll(teacher, block, vectors=vectors, sink=torch.randn(32))
    assert not torch.allclose(sunk, nll)


def test_the_loss_adds_the_weighted_reconstruction_or_is_it_alone_in_the_stage(teacher, context):
    vectors = torch.randn(4, 32, requires_grad=True)
    plain, plain_stats = SubstitutionLoss(teacher, block_size=BLOCK)(vectors, context)
    weighted, stats = SubstitutionLoss(teacher, block_size=BLOCK, reconstruction_weight=0.5)(
        vectors, context
    )
    assert stats["kl"] == pytest.approx(plain_stats["kl"])
    assert weighted.item() == pytest.approx(plain.item() + 0.5 * stats["reconstruction"], rel=1e-5)
    alone, alone_stats = SubstitutionLoss(teacher, block_size=BLOCK)(
        vectors, context, reconstruct_only=True
    )
    assert set(alone_stats) == {"reconstruction"}
    assert alone.item() == pytest.approx(stats["reconstruction"], rel=1e-5)
    alone.backward()
    assert vectors.grad.abs().sum() > 0


def test_a_reconstruction_stage_trains_then_hands_over_to_the_continuation(
    small_dataset, tmp_path
):
    run = validate_run_config(
        {
            "model": {"num_heads": 4, "bos_sink": True},
            "training": {
                "objective": "substitution", "batch_size": 8, "max_steps": 4, "device": "cpu",
                "reconstruction_steps": 2, "eval_every": 4, "eval_examples": 8, "log_every": 1,
            },
        }
    )  # fmt: skip
    seen = []
    result = train_gistnet(
        dataset_path=small_dataset / "train.arrow", run_config=run, output_dir=tmp_path,
        on_progress=lambda p: seen.append((p.step, sorted(p.stats or {}))),
    )  # fmt: skip
    assert result.steps == 4
    by_step = dict(seen)
    assert by_step[1] == ["reconstruction"] and by_step[2] == ["reconstruction"]
    assert "kl" in by_step[3] and "kl" in by_step[4]


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"reconstruction_weight": 0.1}, "objective: substitution"),
        ({"objective": "substitution", "max_steps": 10, "reconstruction_steps": 10}, "leaves none"),
    ],
)
def test_reconstruction_settings_that_cannot_work_are_refused(training, message):
    from gistnet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate_run_config({"training": {"device": "cpu", **training}})
