"""`bench.teacher_memory`: the parameter counts its table is built on are those of the
models themselves, and the measured step runs the shipped preset's GistNet."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bench.teacher_memory import (
    TEACHERS,
    evaluation_bytes,
    gistnet_config,
    serving_bytes,
    shape_of,
    training_bytes,
)

TINY = {
    "llama": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100},
    "gpt_neox": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "vocab_size": 100, "tie_word_embeddings": False},
    "opt": {"hidden_size": 32, "ffn_dim": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100, "word_embed_proj_dim": 32},
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(TINY))
def test_the_meta_device_count_is_the_built_models(family):
    shape = shape_of(family, TINY[family])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **TINY[family]))
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.mlp_width == 48 and shape.width == 32


def test_every_need_grows_with_the_batch_and_the_weights_dtype():
    shape = shape_of("llama", TINY["llama"])
    for need, batch in ((training_bytes, "batch"), (evaluation_bytes, "batch")):
        small, large = (need(shape, **{batch: n}, dtype_bytes=4) for n in (1, 8))
        assert large > small > need(shape, **{batch: 1}, dtype_bytes=2)
    assert serving_bytes(shape, blocks=64, dtype_bytes=4) > shape.parameters * 4


def test_the_estimate_trains_the_shipped_presets_gistnet():
    config = gistnet_config(576)
    assert (config.hidden_size, config.block_size, tuple(config.teacher_layers)) == (576, 32, (0,))
    assert config.token_embeddings and config.bos_sink and config.gist_mlp
    assert set(TEACHERS) >= {"SmolLM2-135M", "Llama-3.2-1B", "Mistral-7B"}
