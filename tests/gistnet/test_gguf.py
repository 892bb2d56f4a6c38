"""A teacher brought from a GGUF file: the folder `import_gguf_teacher` writes loads
through the platform's own loaders and computes what the file's model computes.

The test writes its GGUF itself, as llama.cpp's converter lays one out: a tiny random
Llama (rotary q/k rows interleaved the llama.cpp way, the matrices quantized to Q8_0)
and a small byte-level BPE tokenizer in the file's metadata.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from gistnet.errors import ConfigError, TeacherLoadError
from gistnet.gguf import import_gguf_teacher
from gistnet.teacher import load_teacher, load_tokenizer
from tools.cli import main as gistnet_main

HEADS, KV_HEADS, WIDTH, LAYERS = 4, 2, 64, 2
TEXT = "the capital of france is paris. the cat sat on the mat, and the dog ran far away."


def train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT] * 10, trainer)
    return tokenizer


def interleave_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of a q or k projection's rows: each head's two rotary halves
    interleaved (transformers' GGUF loader undoes it)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(path, *, architecture: str = "llama", seed: int = 0) -> LlamaForCausalLM:
    """A tiny random Llama written to `path` as GGUF; returns the model with the weights the
    file holds (the quantized matrices as they dequantize)."""
    tokenizer = train_tokenizer()
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_context_length(128)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(96)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    state = model.state_dict()
    for name, tensor in state.items():
        weight = tensor.numpy()
        if weight.ndim == 2:  # what a quantized file stores in blocks; norms stay float32
            blocks = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
            dense = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
            tensor.copy_(torch.from_numpy(dense.reshape(weight.shape)))
            heads = HEADS if "q_proj" in name else KV_HEADS if "k_proj" in name else 0
            stored = interleave_rotary_rows(weight, heads) if heads else weight
            blocks = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                names.get_name(name, try_suffixes=(".weight",)),
                blocks,
                raw_shape=blocks.shape,
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    return path, write_llama_gguf(path)


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers") / "tiny-llama"
    return import_gguf_teacher(tiny_gguf[0], out)


def test_imported_folder_loads_as_teacher_and_gives_the_files_logits(tiny_gguf, imported):
    _, reference = tiny_gguf
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in imported.path.iterdir()
    }
    assert (imported.architecture, imported.model_type, imported.dtype) == (
        "llama", "llama", "float32"
    )  # fmt: skip
    teacher = load_teacher(str(imported.path))
    ids = torch.randint(2, imported.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = teacher(ids).logits, reference(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert imported.parameters == sum(p.numel() for p in reference.parameters())


def test_imported_tokenizer_encodes_as_the_files_vocabulary(imported):
    tokenizer = load_tokenizer(str(imported.path))
    reference = train_tokenizer()
    ids = tokenizer("the cat sat on the mat", add_special_tokens=False).input_ids
    assert ids == reference.encode("the cat sat on the mat").ids
    assert tokenizer.decode(ids) == "the cat sat on the mat"
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|start|>", "<|endoftext|>")


def test_bfloat16_import_stores_bfloat16_weights(tiny_gguf, tmp_path):
    from safetensors import safe_open

    result = import_gguf_teacher(tiny_gguf[0], tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(result.path / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    teacher = load_teacher(str(result.path), dtype="bfloat16")
    ids = torch.arange(2, 26)[None]
    with torch.no_grad():
        got, want = teacher(ids).logits.float(), tiny_gguf[1](ids).logits
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "encoder.gguf"
    write_llama_gguf(path, architecture="bert")
    with pytest.raises(TeacherLoadError, match="GGUF architecture 'bert'"):
        import_gguf_teacher(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_folder_that_holds_files(tiny_gguf, imported):
    with pytest.raises(ConfigError, match="not empty"):
        import_gguf_teacher(tiny_gguf[0], imported.path)


def test_cli_teacher_import_writes_the_folder(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "cli-teacher"
    assert gistnet_main(["teacher", "import", str(tiny_gguf[0]), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert "llama" in capsys.readouterr().out
    assert gistnet_main(["teacher", "import", str(tmp_path / "missing.gguf"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
