"""`training.reconstruct_weight`: beside the horizon's KL, the teacher's NLL of the block's
own tokens read after the gist (an autoencoding term, as ICAE's pretraining). What the
term computes, how it enters the loss, and what is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gistnet.config import validate_run_config
from gistnet.errors import ConfigError
from gistnet.substitution import SubstitutionLoss, drop_vector
from tests.gistnet.test_substitution import BLOCK, BOS


@pytest.mark.parametrize("sink", [False, True])
def test_the_term_is_the_teachers_nll_of_the_block_read_after_its_gist(teacher, context, sink):
    """Built by hand: [BOS] gist b_0 ... b_T-2 at the positions a gist is read at (the
    block's last, then on), each position scored on the block's next token."""
    gists = torch.randn(4, 32)
    loss = SubstitutionLoss(teacher, block_size=BLOCK, bos_sink=sink)
    got = loss.reconstruction_nll(gists, context)
    block = context[:, :BLOCK]
    embed = teacher.get_input_embeddings()
    with torch.no_grad():
        rows = [gists[:, None], embed(block[:, :-1])]
        start = BLOCK - 1
        if sink:
            rows.insert(0, drop_vector(teacher, BOS).expand(4, 1, 32))
            start -= 1
        inputs = torch.cat(rows, dim=1)
        positions = torch.arange(start, start + inputs.shape[1]).expand(4, -1)
        logits = teacher(inputs_embeds=inputs, position_ids=positions).logits[:, -BLOCK:]
    expected = F.cross_entropy(logits.transpose(1, 2), block, reduction="none")
    assert got.shape == (4, BLOCK)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_weighted_term_adds_to_the_loss_reports_itself_and_trains_the_gist(teacher, context):
    vectors = torch.randn(4, 32, requires_grad=True)
    plain, plain_stats = SubstitutionLoss(teacher, block_size=BLOCK)(vectors, context)
    objective = SubstitutionLoss(teacher, block_size=BLOCK, reconstruct_weight=0.5)
    loss, stats = objective(vectors, context)
    term = objective.reconstruction_nll(vectors, context).mean()
    torch.testing.assert_close(loss, plain + 0.5 * term)
    assert stats["reconstruct"] == pytest.approx(term.item(), rel=1e-5)
    assert "reconstruct" not in plain_stats and stats["kl"] == pytest.approx(plain_stats["kl"])
    # Gradient steps on the term alone make the gist say its block: the first token, read
    # from the gist alone (a random tiny teacher: 4.12 nats, 3.59 after), becomes likelier.
    gist = torch.zeros(4, 32, requires_grad=True)
    step = torch.optim.Adam([gist], lr=0.3)
    before = objective.reconstruction_nll(gist, context)[:, 0].mean().item()
    for _ in range(30):
        step.zero_grad()
        objective.reconstruction_nll(gist, context).mean().backward()
        step.step()
    assert objective.reconstruction_nll(gist, context)[:, 0].mean().item() < before - 0.4


def test_a_negative_weight_or_one_without_the_substitution_objective_is_refused(teacher):
    with pytest.raises(ConfigError, match="reconstruct_weight must be >= 0"):
        SubstitutionLoss(teacher, block_size=BLOCK, reconstruct_weight=-1.0)
    with pytest.raises(ConfigError, match="needs objective: substitution"):
        validate_run_config({"training": {"objective": "mse", "reconstruct_weight": 1.0}})
    run = validate_run_config({"training": {"objective": "substitution", "reconstruct_weight": 1}})
    assert run.training.reconstruct_weight == 1.0
