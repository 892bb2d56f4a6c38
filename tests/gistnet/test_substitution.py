"""The teacher reading a vector in place of a block, and the substitution loss.

A tiny randomly initialised GPT-2 (fixed seed) stands in for the teacher: the
arithmetic does not depend on what the teacher knows.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gistnet.config import validate_run_config
from gistnet.errors import ConfigError
from gistnet.model import GistNet, GistNetConfig
from gistnet.substitution import (
    SubstitutionLoss,
    drop_token_id,
    drop_vector,
    horizon_log_probs,
    horizon_nll,
    mean_block_embedding,
    substituted_inputs,
)

VOCAB = 61
BOS, EOS = 1, 2
BLOCK = 8
HORIZON = 24  # the block, then 16 horizon tokens


def make_teacher(*, seed: int = 0, bos: int | None = BOS, eos: int | None = EOS):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    return GPT2LMHeadModel(config).eval().requires_grad_(False)


def short_substitution_run(**model):
    """A run config that trains GistNet with the substitution objective for 4 steps of 8
    on the CPU, its `model:` section as given."""
    return validate_run_config(
        {
            "model": {"num_heads": 4, **model},
            "training": {
                "objective": "substitution", "batch_size": 8, "lr": 3e-3, "max_steps": 4,
                "device": "cpu", "eval_every": 4, "eval_examples": 8,
            },
        }
    )  # fmt: skip


def make_tokenizer(*, bos: str | None = "<s>", eos: str | None = "</s>"):
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    specials = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **specials)


@pytest.fixture
def teacher():
    return make_teacher()


@pytest.fixture
def context():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (4, HORIZON), generator=generator)


def test_substituted_inputs_hold_the_vector_at_the_blocks_last_position(teacher, context):
    vectors = torch.randn(4, 32)
    embeds, positions = substituted_inputs(teacher, context, block_size=BLOCK, vectors=vectors)

    assert embeds.shape == (4, 1 + HORIZON - BLOCK, 32)
    assert torch.equal(embeds[:, 0], vectors)
    assert torch.equal(embeds[:, 1:], teacher.get_input_embeddings()(context[:, BLOCK:]))
    expected = torch.arange(BLOCK - 1, HORIZON).expand(4, -1)
    assert torch.equal(positions, expected)  # h keeps the positions it has in `full`


def test_full_condition_nll_equals_the_teachers_causal_lm_loss_over_the_horizon(teacher, context):
    labels = context.clone()
    labels[:, :BLOCK] = -100  # score h only
    expected = teacher(context, labels=labels).loss

    nll = horizon_nll(teacher, context, block_size=BLOCK)

    assert nll.shape == (4, HORIZON - BLOCK)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll.mean(), expected, rtol=1e-5, atol=1e-6)


def test_a_one_token_block_replaced_by_its_own_embedding_scores_like_full(teacher, context):
    # With block_size 1 the vector position *is* the block: same content, same position id.
    own_embedding = teacher.get_input_embeddings()(context[:, 0])

    substituted = horizon_nll(teacher, context, block_size=1, vectors=own_embedding)
    full = horizon_nll(teacher, context, block_size=1)

    torch.testing.assert_close(substituted, full, rtol=1e-5, atol=1e-5)


def test_the_vector_changes_the_prediction_of_the_horizon(teacher, context):
    one = horizon_nll(teacher, context, block_size=BLOCK, vectors=torch.zeros(4, 32))
    other = horizon_nll(teacher, context, block_size=BLOCK, vectors=torch.randn(4, 32))
    assert not torch.allclose(one, other)


def test_drop_token_is_bos_else_eos_else_an_error():
    assert drop_token_id(make_tokenizer()) == BOS
    assert drop_token_id(make_tokenizer(bos=None)) == EOS
    # Neither on the tokenizer: the teacher's config is asked next.
    assert drop_token_id(make_tokenizer(bos=None, eos=None), make_teacher(bos=None)) == EOS
    with pytest.raises(ConfigError, match="neither a BOS nor an EOS"):
        drop_token_id(make_tokenizer(bos=None, eos=None), make_teacher(bos=None, eos=None))


def test_drop_vector_is_the_tokens_input_embedding(teacher):
    vector = drop_vector(teacher, BOS)
    assert vector.dtype == torch.float32
    assert torch.equal(vector, teacher.get_input_embeddings().weight[BOS])


def test_mean_block_embedding_averages_the_blocks_input_embeddings(teacher, context):
    block = context[:, :BLOCK]
    expected = teacher.get_input_embeddings().weight[block].mean(dim=1)
    torch.testing.assert_close(mean_block_embedding(teacher, block), expected)


def test_substitution_loss_is_zero_when_the_vector_restores_the_block(teacher, context):
    loss_fn = SubstitutionLoss(teacher, block_size=1)
    loss, stats = loss_fn(teacher.get_input_embeddings()(context[:, 0]), context)
    assert abs(stats["kl"]) < 1e-5
    assert loss.item() == pytest.approx(stats["kl"], abs=1e-6)


def test_substitution_loss_adds_the_weighted_nll(teacher, context):
    vectors = torch.randn(4, 32)
    loss, stats = SubstitutionLoss(teacher, block_size=BLOCK, nll_weight=0.5)(vectors, context)
    expected_nll = horizon_nll(teacher, context, block_size=BLOCK, vectors=vectors).mean()
    assert stats["nll"] == pytest.approx(expected_nll.item(), rel=1e-5)
    assert loss.item() == pytest.approx(stats["kl"] + 0.5 * stats["nll"], rel=1e-5)


def test_kl_matches_its_definition_over_the_horizon_distributions(teacher, context):
    vectors = torch.randn(4, 32)
    _, stats = SubstitutionLoss(teacher, block_size=BLOCK)(vectors, context)
    full = horizon_log_probs(teacher, context, block_size=BLOCK).exp()
    gist = horizon_log_probs(teacher, context, block_size=BLOCK, vectors=vectors).exp()
    expected = (full * (full.log() - gist.log())).sum(-1).mean()
    assert stats["kl"] == pytest.approx(expected.item(), rel=1e-4)


def test_a_few_steps_on_a_free_vector_lower_the_kl(teacher, context):
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK)
    vectors = torch.zeros(4, 32, requires_grad=True)
    optimizer = torch.optim.Adam([vectors], lr=0.1)
    history = []
    for _ in range(25):
        loss, stats = loss_fn(vectors, context)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(stats["kl"])
    assert history[-1] < 0.7 * history[0]


def test_a_few_steps_on_a_tiny_gistnet_lower_the_kl(teacher, context):
    torch.manual_seed(0)
    gistnet = GistNet(GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=2))
    states = teacher.transformer(context[:, :BLOCK]).last_hidden_state  # (B, T, D)
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK)
    optimizer = torch.optim.Adam(gistnet.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        loss, stats = loss_fn(gistnet(states), context)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(stats["kl"])
    assert history[-1] < 0.8 * history[0]


def test_a_training_step_leaves_the_teacher_untouched(context):
    # A teacher as a careless caller hands it over: trainable, in train mode, and inside
    # the optimizer. The loss must freeze it itself, or this step would move its weights.
    teacher = make_teacher().train().requires_grad_(True)
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    torch.manual_seed(0)
    gistnet = GistNet(GistNetConfig(hidden_size=32, block_size=BLOCK, num_heads=2))
    gistnet_before = [p.detach().clone() for p in gistnet.parameters()]
    loss_fn = SubstitutionLoss(teacher, block_size=BLOCK, nll_weight=0.5)
    teacher.train()  # flipped back by the caller: the loss still runs it in eval mode
    optimizer = torch.optim.AdamW([*gistnet.parameters(), *teacher.parameters()], lr=1e-2)
    states = torch.randn(4, BLOCK, 32)

    loss, _ = loss_fn(gistnet(states), context)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(p, before[name]) for name, p in teacher.named_parameters())
    moved = [
        not torch.equal(p, b) for p, b in zip(gistnet.parameters(), gistnet_before, strict=True)
    ]
    assert all(moved)  # the step did train GistNet


def test_the_loss_is_float32_for_a_bfloat16_teacher(context):
    teacher = make_teacher().to(torch.bfloat16)
    vectors = torch.randn(4, 32, requires_grad=True)
    loss, stats = SubstitutionLoss(teacher, block_size=BLOCK)(vectors, context)
    loss.backward()
    assert loss.dtype == torch.float32
    assert vectors.grad is not None and vectors.grad.dtype == torch.float32
    assert torch.isfinite(loss) and stats["kl"] >= 0


def test_a_context_without_horizon_is_refused(teacher, context):
    with pytest.raises(ConfigError, match="no horizon"):
        horizon_nll(teacher, context[:, :BLOCK], block_size=BLOCK)
