"""The compressed context builder: raw tokens and gists laid out for the teacher at the
positions their text held, for batches of any layout.

The teachers are tiny random models (the arithmetic does not depend on what they know):
the shared GPT-2 (absolute positions) and a Llama (rotary positions).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from gistnet.context import (
    CompressedSpan,
    RawTokens,
    context_inputs,
    context_positions,
    teacher_forward,
)
from gistnet.errors import ConfigError
from gistnet.substitution import horizon_nll, substituted_inputs
from tests.gistnet.test_substitution import BLOCK, HORIZON, VOCAB

WIDTH = 32


@pytest.fixture(scope="module")
def rotary_teacher():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval().requires_grad_(False)


def own_embeddings(teacher, token_ids: torch.Tensor, block_size: int) -> CompressedSpan:
    """A span whose 'gists' are its blocks' own token embeddings, k = block_size: (B, m*T)."""
    embeds = teacher.get_input_embeddings()(token_ids)  # (B, m*T, D)
    batch, length, width = embeds.shape
    blocks = embeds.reshape(batch, length // block_size, block_size, width)
    return CompressedSpan(blocks, block_size=block_size)


def logits_of(teacher, context, **kwargs) -> torch.Tensor:
    return teacher_forward(teacher, context_inputs(teacher, [context], **kwargs)).logits


def test_a_context_of_raw_tokens_gives_the_token_id_forwards_logits(teacher, context):
    expected = teacher(input_ids=context, use_cache=False).logits
    parts = [RawTokens(context[:, :5]), RawTokens(context[:, 5:])]
    torch.testing.assert_close(logits_of(teacher, parts), expected, rtol=1e-5, atol=1e-5)


def test_a_rotary_teachers_raw_context_gives_its_token_id_logits(rotary_teacher, context):
    expected = rotary_teacher(input_ids=context, use_cache=False).logits
    actual = logits_of(rotary_teacher, [RawTokens(context)])
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 2])
def test_blocks_read_as_their_own_token_embeddings_score_exactly_like_the_text(
    teacher, context, blocks
):
    # k = T: every position of each block holds its own token's embedding, so the context
    # is the text itself, wherever the span stands in it.
    span = own_embeddings(teacher, context[:, 2 : 2 + blocks * 4], block_size=4)
    parts = [RawTokens(context[:, :2]), span, RawTokens(context[:, 2 + blocks * 4 :])]
    expected = teacher(input_ids=context, use_cache=False).logits
    torch.testing.assert_close(logits_of(teacher, parts), expected, rtol=1e-5, atol=1e-5)


def test_gists_stand_at_their_blocks_last_positions_and_raw_tokens_at_theirs():
    gists = torch.zeros(1, 2, 1, WIDTH)  # 2 blocks of 4, one gist each
    parts = [
        RawTokens(torch.zeros(1, 6, dtype=torch.long)),
        CompressedSpan(gists, block_size=4),
        RawTokens(torch.zeros(1, 2, dtype=torch.long)),
    ]
    assert context_positions(parts).tolist() == [0, 1, 2, 3, 4, 5, 9, 13, 14, 15]
    two_each = [CompressedSpan(torch.zeros(1, 2, 2, WIDTH), block_size=4)]
    assert context_positions(two_each, start=3).tolist() == [5, 6, 9, 10]


def test_the_tokens_after_a_span_keep_the_positions_they_hold_in_the_text(teacher, context):
    gists = torch.randn(4, 2, 3, WIDTH)
    parts = [CompressedSpan(gists, block_size=BLOCK // 2), RawTokens(context[:, BLOCK:])]
    inputs = context_inputs(teacher, [parts])
    assert inputs.inputs_embeds.shape == (4, 6 + HORIZON - BLOCK, WIDTH)
    assert torch.equal(inputs.inputs_embeds[:, :6], gists.reshape(4, 6, WIDTH))
    assert torch.equal(inputs.position_ids[0, 6:], torch.arange(BLOCK, HORIZON))
    assert inputs.attention_mask.all() and inputs.lengths.tolist() == [6 + HORIZON - BLOCK] * 4


def test_an_absolute_position_teacher_reads_a_context_differently_when_it_moves(teacher, context):
    parts = [RawTokens(context)]
    assert not torch.allclose(logits_of(teacher, parts), logits_of(teacher, parts, starts=[7]))


def test_a_rotary_teacher_reads_a_moved_context_alike(rotary_teacher, context):
    # Rotary attention sees only relative positions: a context moved as a whole is read alike.
    parts = [CompressedSpan(torch.randn(4, 2, 1, WIDTH), block_size=4), RawTokens(context)]
    moved = logits_of(rotary_teacher, parts, starts=[9])
    torch.testing.assert_close(moved, logits_of(rotary_teacher, parts), rtol=1e-4, atol=1e-4)


def test_the_single_block_substitution_is_the_one_block_context(teacher, context):
    vectors = torch.randn(4, 2, WIDTH)
    sink = torch.randn(WIDTH)
    embeds, positions = substituted_inputs(
        teacher, context, block_size=BLOCK, vectors=vectors, sink=sink
    )
    parts = [CompressedSpan(vectors[:, None], block_size=BLOCK), RawTokens(context[:, BLOCK:])]
    inputs = context_inputs(teacher, [parts], sink=sink)
    assert torch.equal(embeds, inputs.inputs_embeds) and torch.equal(positions, inputs.position_ids)
    # its horizon NLL is read from the same layout, less the last token
    logits = teacher_forward(
        teacher, context_inputs(teacher, [[*parts[:1], RawTokens(context[:, BLOCK:-1])]], sink=sink)
    ).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, -(HORIZON - BLOCK) :].transpose(1, 2), context[:, BLOCK:], reduction="none"
    )
    expected = horizon_nll(teacher, context, block_size=BLOCK, vectors=vectors, sink=sink)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)


def test_a_ragged_batch_is_padded_on_the_right_and_each_row_reads_as_alone(teacher, context):
    long_rows = [RawTokens(context[:2])]
    short_rows = [
        CompressedSpan(torch.randn(2, 1, 1, WIDTH), block_size=BLOCK),
        RawTokens(context[2:, BLOCK:]),
    ]
    inputs = context_inputs(teacher, [long_rows, short_rows])
    short = 1 + HORIZON - BLOCK
    assert inputs.lengths.tolist() == [HORIZON, HORIZON, short, short]
    assert inputs.attention_mask[:2].all() and inputs.attention_mask[2:, :short].all()
    assert not inputs.attention_mask[2:, short:].any()
    assert not inputs.inputs_embeds[2:, short:].any()

    together = teacher_forward(teacher, inputs).logits
    torch.testing.assert_close(together[:2], logits_of(teacher, long_rows), rtol=1e-5, atol=1e-5)
    alone = logits_of(teacher, short_rows)
    torch.testing.assert_close(together[2:, :short], alone, rtol=1e-5, atol=1e-5)


def test_the_sink_is_read_one_position_before_the_first_input(teacher, context):
    sink = torch.randn(WIDTH)
    parts = [CompressedSpan(torch.randn(4, 3, 1, WIDTH), block_size=4), RawTokens(context[:, :2])]
    inputs = context_inputs(teacher, [parts], sink=sink)
    assert torch.equal(inputs.inputs_embeds[:, 0], sink.expand(4, -1))
    assert inputs.position_ids[0].tolist() == [2, 3, 7, 11, 12, 13]
    with pytest.raises(ConfigError, match="no positions are left"):
        context_inputs(teacher, [[RawTokens(context)]], sink=sink)


def test_malformed_contexts_are_refused_naming_what_is_wrong(teacher, context):
    with pytest.raises(ConfigError, match="hidden size 32"):
        context_inputs(teacher, [[CompressedSpan(torch.randn(4, 1, 1, 16), block_size=4)]])
    with pytest.raises(ConfigError, match="same rows"):
        context_inputs(teacher, [[RawTokens(context), RawTokens(context[:2])]])
    with pytest.raises(ConfigError, match="at most 4"):
        CompressedSpan(torch.randn(4, 1, 5, WIDTH), block_size=4)
    with pytest.raises(ConfigError, match="blocks, k, width"):
        CompressedSpan(torch.randn(4, 5, WIDTH), block_size=4)


def test_gradients_flow_from_the_teacher_back_into_the_gists(teacher, context):
    gists = torch.randn(4, 2, 1, WIDTH, requires_grad=True)
    parts = [CompressedSpan(gists, block_size=4), RawTokens(context[:, BLOCK:])]
    logits_of(teacher, parts).logsumexp(-1).sum().backward()
    assert gists.grad is not None and gists.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tokens_after_a_span_read_all_its_blocks_across_the_positions_left_out(
    teacher, rotary_teacher, context, family
):
    # The positions between gists jump; a teacher must still attend across the jumps.
    model = teacher if family == "gpt2" else rotary_teacher
    gists = torch.randn(4, 3, 1, WIDTH)
    other = gists.clone()
    other[:, 0] = torch.randn(4, 1, WIDTH)
    tail = RawTokens(context[:, 12:])
    before = logits_of(model, [CompressedSpan(gists, block_size=4), tail])
    after = logits_of(model, [CompressedSpan(other, block_size=4), tail])
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-4
