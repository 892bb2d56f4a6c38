"""The multi-block objective on the shared tiny random GPT-2: its arithmetic against the
single-block substitution, its zero, and a few steps of a tiny GistNet lowering it."""

from __future__ import annotations

import pytest
import torch

from gistnet.errors import ConfigError
from gistnet.model import GistNet, GistNetConfig
from gistnet.multiblock import MultiBlockLoss
from gistnet.substitution import SubstitutionLoss
from tests.gistnet.test_substitution import BLOCK

WIDTH = 32
SMALL = 4  # blocks of 4 tokens: a window of 4 blocks, then the 8 horizon tokens


def test_one_block_of_one_is_the_single_block_substitution_kl(teacher, context):
    vectors = torch.randn(4, 2, WIDTH)
    sink = torch.randn(WIDTH)
    loss, _ = MultiBlockLoss(teacher, block_size=BLOCK, blocks=1, sink=sink)(
        vectors[:, None], context
    )
    single = SubstitutionLoss(teacher, block_size=BLOCK)
    single.sink = sink
    expected, _ = single(vectors, context)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_blocks_given_as_their_own_embeddings_lose_nothing(teacher, context):
    loss_fn = MultiBlockLoss(teacher, block_size=SMALL, blocks=4)
    own = teacher.get_input_embeddings()(context[:, : 3 * SMALL]).reshape(4, 3, SMALL, WIDTH)
    loss, stats = loss_fn(own, context)
    assert stats["compressed_blocks"] == 3
    torch.manual_seed(0)
    other = loss_fn(torch.randn(4, 3, 1, WIDTH), context)[0]
    # the random teacher reads little of its context, so the KL of wrong gists is small,
    # but that of the blocks' own embeddings is float32 rounding
    assert loss.item() < 1e-3 * other.item()


def test_a_few_steps_on_a_tiny_gistnet_lower_the_kl_of_a_compressed_window(teacher, context):
    torch.manual_seed(0)
    gistnet = GistNet(GistNetConfig(hidden_size=WIDTH, block_size=SMALL, num_heads=2))
    loss_fn = MultiBlockLoss(teacher, block_size=SMALL, blocks=4)
    blocks = context[:, : 4 * SMALL].reshape(4, 4, SMALL)
    states = teacher.transformer(blocks.reshape(-1, SMALL)).last_hidden_state  # (B*4, T, D)
    states = states.reshape(4, 4, SMALL, WIDTH)
    full = loss_fn.full_log_probs(context)
    optimizer = torch.optim.Adam(gistnet.parameters(), lr=3e-3)
    history = []
    for step in range(24):
        compressed = 1 + step % 4  # a changing number of the oldest blocks
        gists = gistnet(states[:, :compressed])[:, :, None]  # (B, j, D) -> (B, j, 1, D)
        loss, stats = loss_fn(gists, context, full=full)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(stats["kl"])
    assert sum(history[-4:]) < 0.8 * sum(history[:4])


def test_windows_and_gists_that_do_not_fit_are_refused(teacher, context):
    loss_fn = MultiBlockLoss(teacher, block_size=SMALL, blocks=6)
    with pytest.raises(ConfigError, match="needs more than 24 tokens"):
        loss_fn(torch.randn(4, 1, 1, WIDTH), context)
    with pytest.raises(ConfigError, match="compress 1 to 4"):
        MultiBlockLoss(teacher, block_size=SMALL, blocks=4)(torch.randn(4, 5, 1, WIDTH), context)
