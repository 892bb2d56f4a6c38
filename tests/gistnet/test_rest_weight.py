"""`training.rest_weight`: the KL of horizon tokens 9 onward counts that many times the
first 8's. What the loss is, what it reports, and what is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gistnet.errors import ConfigError
from gistnet.substitution import SubstitutionLoss, horizon_log_probs, horizon_targets
from tests.gistnet.test_substitution import BLOCK, HORIZON


def _per_token_kl(teacher, context, vectors):
    with torch.no_grad():
        full = horizon_log_probs(teacher, context, block_size=BLOCK)
        gist = horizon_log_probs(teacher, context, block_size=BLOCK, vectors=vectors)
    return F.kl_div(gist, full, reduction="none", log_target=True).sum(-1), gist  # (B, L)


def test_the_loss_weighs_tokens_9_onward_and_keeps_its_scale(teacher, context):
    vectors = torch.randn(4, 32, requires_grad=True)
    loss, stats = SubstitutionLoss(teacher, block_size=BLOCK, rest_weight=3.0)(vectors, context)
    per_token, _ = _per_token_kl(teacher, context, vectors)
    weights = torch.tensor([1.0] * 8 + [3.0] * (HORIZON - BLOCK - 8))
    weights = weights / weights.mean()  # mean 1: still nats per token
    torch.testing.assert_close(loss.detach(), (per_token * weights).mean())
    # the reported KL is the plain one, comparable across runs
    assert stats["kl"] == pytest.approx(per_token.mean().item(), rel=1e-5)
    loss.backward()
    assert vectors.grad.abs().sum() > 0


def test_weight_one_is_the_plain_kl_and_the_nll_adds_on_top(teacher, context):
    vectors = torch.randn(4, 32)
    plain, _ = SubstitutionLoss(teacher, block_size=BLOCK)(vectors, context)
    one, _ = SubstitutionLoss(teacher, block_size=BLOCK, rest_weight=1.0)(vectors, context)
    torch.testing.assert_close(one, plain)
    both, _ = SubstitutionLoss(teacher, block_size=BLOCK, rest_weight=2.0, nll_weight=0.5)(
        vectors, context
    )
    per_token, gist = _per_token_kl(teacher, context, vectors)
    weights = torch.tensor([1.0] * 8 + [2.0] * (HORIZON - BLOCK - 8))
    targets = horizon_targets(context, block_size=BLOCK)
    nll = -gist.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(both, (per_token * weights / weights.mean()).mean() + 0.5 * nll)


def test_the_loss_refuses_a_rest_weight_that_is_not_positive(teacher):
    with pytest.raises(ConfigError, match="rest_weight must be > 0"):
        SubstitutionLoss(teacher, block_size=BLOCK, rest_weight=-1.0)
