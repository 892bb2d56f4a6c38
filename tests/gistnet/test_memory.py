"""The memory estimate a training request is checked against: exact in what it can count
(parameters), and growing with what costs memory (batch, layers, the teacher)."""

from __future__ import annotations

import pytest

from gistnet.config import GistNetConfig
from gistnet.memory import TeacherShape, format_bytes, gistnet_parameters, training_memory
from gistnet.model import GistNet

SMALL = GistNetConfig(hidden_size=128, block_size=32)


@pytest.mark.parametrize(
    "config",
    [
        GistNetConfig(hidden_size=128, block_size=32),
        GistNetConfig(hidden_size=64, block_size=32, num_heads=2, num_layers=3, mlp_ratio=2.5),
        GistNetConfig(hidden_size=96, block_size=16, num_heads=6, num_layers=2),
        GistNetConfig(
            hidden_size=64,
            block_size=32,
            gists_per_block=2,
            pool_queries=3,
            gist_mlp=True,
            token_embeddings=True,
        ),  # fmt: skip
    ],
)
def test_parameters_are_counted_exactly_without_building_the_model(config):
    assert gistnet_parameters(config) == sum(p.numel() for p in GistNet(config).parameters())


def test_the_estimate_grows_with_batch_layers_and_the_teacher():
    small = training_memory(SMALL, batch_size=8)
    assert small.model_bytes == 16 * small.parameters  # weights, gradients, two AdamW moments
    assert training_memory(SMALL, batch_size=64).activations_bytes == pytest.approx(
        8 * small.activations_bytes
    )
    deep = training_memory(
        GistNetConfig(hidden_size=128, block_size=32, num_layers=8), batch_size=8
    )
    assert deep.activations_bytes > 6 * small.activations_bytes
    teacher = TeacherShape(layers=12, width=768, vocab=50257, mlp_width=3072)
    substitution = training_memory(
        GistNetConfig(hidden_size=768, block_size=32, num_heads=12),
        batch_size=64,
        objective="substitution",
        horizon=128,
        teacher=teacher,
    )
    assert substitution.teacher_bytes > 4 * teacher.parameters  # weights, then activations
    assert substitution.total > substitution.model_bytes + substitution.activations_bytes


def test_a_multiblock_run_counts_its_teacher_and_every_block_gistnet_reads():
    teacher = TeacherShape(layers=12, width=768, vocab=50257, mlp_width=3072)
    config = GistNetConfig(hidden_size=768, block_size=32, num_heads=12)
    common = {"batch_size": 16, "horizon": 512, "teacher": teacher}
    one = training_memory(config, objective="substitution", **common)
    many = training_memory(config, objective="multiblock", blocks=14, **common)
    # the same teacher forwards; multiblock's loss keeps the float32 log-softmax of its
    # logits, which the substitution objective's fused loss does not
    tokens = 16 * 512
    assert many.teacher_bytes - one.teacher_bytes == tokens * teacher.vocab * (16 - 12)
    assert one.teacher_bytes > 4 * teacher.parameters
    assert many.activations_bytes == pytest.approx(14 * one.activations_bytes)


def test_checkpointing_and_a_half_precision_teacher_lower_the_teachers_share():
    teacher = TeacherShape(layers=30, width=576, vocab=49152, mlp_width=1536)  # SmolLM2-135M
    model = GistNetConfig(hidden_size=576, block_size=32, num_heads=9)

    def teacher_bytes(**options):
        return training_memory(
            model, batch_size=8, objective="substitution", horizon=1024, teacher=teacher,
            **options,
        ).teacher_bytes  # fmt: skip

    plain = teacher_bytes()
    checkpointed = teacher_bytes(activation_checkpointing=True)
    half = teacher_bytes(teacher_bytes_per_value=2)
    # 30 layers of kept activations become 30 layer inputs and one layer's activations
    tokens = 8 * 1024
    layer = 18 * 576 + 3 * 1536
    assert plain - checkpointed == 4 * tokens * (30 * layer - 30 * 576 - layer)
    # half the weights and activations, and the gist logits and their gradient in bf16
    assert plain - half == 2 * (teacher.parameters + tokens * 30 * layer) + tokens * 4 * 49152



def test_the_reconstruction_term_adds_its_forward_over_the_block():
    """training.reconstruct_weight: a second gist-side forward over [BOS] gist and the
    block's first 31 tokens, its activations and its logits kept for the same backward."""
    teacher = TeacherShape(layers=30, width=576, vocab=49152, mlp_width=1536)  # SmolLM2-135M
    model = GistNetConfig(hidden_size=576, block_size=32, num_heads=9)
    common = {"batch_size": 8, "objective": "substitution", "horizon": 64, "teacher": teacher}
    plain = training_memory(model, **common)
    both = training_memory(model, reconstruct=True, **common)
    tokens = 8 * 33
    layer = 18 * 576 + 3 * 1536
    assert both.teacher_bytes - plain.teacher_bytes == tokens * (4 * 30 * layer + 16 * 49152)
    assert training_memory(SMALL, batch_size=8, reconstruct=True) == training_memory(
        SMALL, batch_size=8
    )  # an mse run has no teacher side to add to

def test_the_description_names_the_parts():
    text = training_memory(
        GistNetConfig(hidden_size=128, block_size=32, num_layers=64), batch_size=4096
    ).describe()
    assert text.startswith("about ") and "GiB" in text and "activations" in text
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.0 GiB"


def _families():
    from transformers import (
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
    )

    common = {"vocab_size": 4000, "hidden_size": 256, "num_hidden_layers": 2}
    return [
        LlamaConfig(**common, intermediate_size=688, num_attention_heads=8, num_key_value_heads=2),
        MistralConfig(**common, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4),
        Qwen2Config(**common, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                    tie_word_embeddings=False),
        Phi3Config(**common, intermediate_size=512, num_attention_heads=8, pad_token_id=0),
        GPT2Config(vocab_size=4000, n_embd=256, n_layer=2, n_head=8, n_positions=512),
        OPTConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=2, ffn_dim=1024,
                  num_attention_heads=8, max_position_embeddings=512, word_embed_proj_dim=256),
    ]  # fmt: skip


@pytest.mark.parametrize("config", _families(), ids=lambda c: c.model_type)
def test_a_teachers_parameters_are_counted_from_its_config(config):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    built = sum(p.numel() for p in model.parameters())
    # Norms and biases are left out: well under 1% at real proportions, ~1% at these.
    assert TeacherShape.from_hf_config(config).parameters == pytest.approx(built, rel=0.015)
