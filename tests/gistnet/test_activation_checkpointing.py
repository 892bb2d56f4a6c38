"""`training.activation_checkpointing`: the teacher's layers on the gist side run again in
the backward pass instead of keeping their activations, and the loss and the gists'
gradient are what they are without it."""

from __future__ import annotations

import pytest
import torch
import transformers

from gistnet.config import validate_run_config
from gistnet.errors import ConfigError
from gistnet.substitution import SubstitutionLoss
from gistnet.teacher import checkpointed_layers, decoder_layers

VOCAB, WIDTH, LAYERS, BLOCK = 97, 32, 3, 8

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    ),  # fmt: skip
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def teacher(request):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]())
    return model.eval().requires_grad_(False)


def _count_layer_work(teacher) -> tuple[list[int], list]:
    """A counter of the forwards run inside the decoder layers (their first submodule's:
    a recomputation calls the layer's forward, not the layer, so a hook on the layer
    itself would not see it)."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    handles = [
        next(layer.children()).register_forward_hook(count) for layer in decoder_layers(teacher)
    ]
    return calls, handles


def _loss_and_grad(teacher, checkpointing: bool):
    context = torch.randint(3, VOCAB, (4, 3 * BLOCK), generator=torch.Generator().manual_seed(1))
    gists = torch.randn(4, 2, WIDTH, generator=torch.Generator().manual_seed(2))
    gists.requires_grad_()
    loss_fn = SubstitutionLoss(
        teacher, block_size=BLOCK, nll_weight=0.3, bos_sink=True,
        activation_checkpointing=checkpointing,
    )  # fmt: skip
    kept = []  # what autograd keeps for the backward pass outside checkpointed layers

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = loss_fn(gists, context)
    calls, handles = _count_layer_work(teacher)
    try:
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return loss.detach(), gists.grad, calls[0], sum(kept)


def test_checkpointing_gives_the_same_loss_and_gist_gradient(teacher):
    plain_loss, plain_grad, plain_recomputed, plain_kept = _loss_and_grad(teacher, False)
    loss, grad, recomputed, kept = _loss_and_grad(teacher, True)
    torch.testing.assert_close(loss, plain_loss, atol=0, rtol=0)
    torch.testing.assert_close(grad, plain_grad, atol=1e-6, rtol=1e-5)
    # the backward pass ran every layer's forward again; without checkpointing, none
    assert plain_recomputed == 0 and recomputed == LAYERS
    # and kept less for it: the layers' activations are not held between the passes
    assert kept < plain_kept / 2, (kept, plain_kept)


def test_the_layers_are_themselves_again_after_the_block(teacher):
    layers = decoder_layers(teacher)
    assert len(layers) == LAYERS
    with checkpointed_layers(teacher):
        assert all("forward" in layer.__dict__ for layer in layers)
    assert not any("forward" in layer.__dict__ for layer in layers)


def test_checkpointing_needs_the_substitution_objective():
    with pytest.raises(ConfigError, match="activation_checkpointing .* objective: substitution"):
        validate_run_config({"training": {"activation_checkpointing": True}})
    run = validate_run_config(
        {"training": {"objective": "substitution", "activation_checkpointing": True}}
    )
    assert run.training.activation_checkpointing
    assert not validate_run_config({}).training.activation_checkpointing  # off by default
