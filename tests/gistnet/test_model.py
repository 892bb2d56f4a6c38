from __future__ import annotations

import pytest
import torch

from gistnet.errors import ConfigError
from gistnet.model import GistNet, GistNetConfig


def make(**kw) -> GistNet:
    torch.manual_seed(0)
    return GistNet(GistNetConfig(hidden_size=64, block_size=32, num_heads=4, **kw)).eval()


def test_blocks_of_states_become_one_gist_each():
    model = make(num_layers=2)
    x = torch.randn(3, 5, 32, 64)
    assert model(x).shape == (3, 5, 64)
    # a single block per example: (B, T, D) -> (B, D), the same vectors
    torch.testing.assert_close(model(x[:, 0]), model(x)[:, 0])


def test_masked_tokens_do_not_change_the_gist():
    model = make()
    x = torch.randn(2, 1, 32, 64)
    mask = torch.ones(2, 1, 32, dtype=torch.bool)
    mask[:, :, 20:] = False
    noisy = x.clone()
    noisy[:, :, 20:] = torch.randn_like(noisy[:, :, 20:]) * 100
    torch.testing.assert_close(model(x, mask), model(noisy, mask))
    assert not torch.allclose(model(x), model(noisy))


def test_gist_depends_on_token_order_through_rotary_positions():
    model = make()
    with torch.no_grad():  # weights far from their small initial values, so order shows
        for p in model.parameters():
            p.normal_(std=0.3)
    x = torch.randn(1, 32, 64)
    a, b = model(x), model(x.flip(1))
    assert (a - b).abs().max() > 1e-2 * a.abs().max()


def test_states_of_the_wrong_width_are_refused_with_both_widths():
    with pytest.raises(ConfigError, match="width 32 but this GistNet was built for hidden_size 64"):
        make()(torch.randn(1, 32, 32))


@pytest.mark.parametrize("k", [1, 2])
def test_several_queries_per_gist_and_the_gist_mlp_keep_the_shapes(k):
    model = make(gists_per_block=k, pool_queries=3, gist_mlp=True)
    x = torch.randn(2, 4, 32, 64)
    assert model(x).shape == ((2, 4, 64) if k == 1 else (2, 4, k, 64))
    # each gist is one linear map of its 3 reads, side by side
    assert model.pool.proj.weight.shape == (64, 3 * 64)
    assert model.pool.query.shape == (4, 3 * k, 16)


def test_the_queries_of_one_gist_read_different_parts_of_the_block():
    model = make(pool_queries=2)
    x = torch.randn(1, 32, 64)
    # with the reads of the second query zeroed in the mixing map, the gist no longer
    # depends on what only that query attends to: the two reads are distinct inputs
    full = model(x)
    with torch.no_grad():
        model.pool.proj.weight[:, 64:] = 0
    assert not torch.allclose(model(x), full)


def test_one_query_per_gist_keeps_the_parameters_older_checkpoints_hold():
    names = {n: tuple(p.shape) for n, p in make().named_parameters()}
    assert names["pool.proj.weight"] == (64, 64) and names["pool.query"] == (4, 1, 16)
    assert not any(n.startswith("gist_mlp") for n in names)


def test_pool_queries_below_one_are_refused():
    with pytest.raises(ConfigError, match="pool_queries must be at least 1"):
        make(pool_queries=0)
