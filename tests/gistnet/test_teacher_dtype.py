"""How the teacher computes while GistNet trains: `training.teacher_dtype` (the teacher in
the dtype a run asks for while GistNet and the losses stay float32, and the checkpoint says
which dtype it trained with) and `training.compile` (torch.compile, the same losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from gistnet.checkpoint import load_checkpoint
from gistnet.config import validate_dataset_config, validate_run_config
from gistnet.data import prepare_dataset
from gistnet.errors import ConfigError
from gistnet.teacher import load_tokenizer
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import SAMPLE_TEACHER, sample_documents, small_dataset_config

VOCAB = 1971  # the sample tokenizer's


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Token ids only, for a tiny random Llama with the sample tokenizer: the teacher runs
    inside every step, on both sides of the loss and for GistNet's input."""
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    load_tokenizer(str(SAMPLE_TEACHER)).save_pretrained(folder)
    config = small_dataset_config(
        tokenizer=str(folder),
        teacher_model=str(folder),
        teacher_states="none",
        splits={"train": {"documents": sample_documents("train", 6)}},
    )
    out = str(tmp_path_factory.mktemp("dataset"))
    prepare_dataset(validate_dataset_config(config), output_dir=out)
    return out


def _train(dataset: str, folder, dtype: str, **training):
    run = validate_run_config(
        {
            "preset": "substitution",
            "model": {"num_heads": 4},
            "training": {
                "batch_size": 4, "max_steps": 3, "device": "cpu", "nll_weight": 0.3,
                "teacher_dtype": dtype, **training,
            },
        }
    )  # fmt: skip
    return train_gistnet(
        TrainRequest(dataset=dataset, output_dir=folder, settings=TrainSettings(run=run))
    )


def test_a_bfloat16_teacher_trains_to_float32s_losses_and_says_so(dataset, tmp_path):
    reference = _train(dataset, tmp_path / "float32", "float32")
    half = _train(dataset, tmp_path / "bfloat16", "bfloat16")
    losses = [h["loss"] for h in half.history]
    assert len(losses) == 3 and np.isfinite(losses).all()
    # bfloat16 keeps 8 bits of mantissa: on this teacher the loss (mostly 0.3 x the NLL of
    # the horizon, near log V) moved by about 1e-5 of itself, the KL (near 1e-3) by 0.2%
    np.testing.assert_allclose(losses, [h["loss"] for h in reference.history], rtol=1e-3)
    np.testing.assert_allclose(
        [h["kl"] for h in half.history], [h["kl"] for h in reference.history], rtol=2e-2
    )
    assert losses != [h["loss"] for h in reference.history]  # the teacher did run in bfloat16

    model, info = load_checkpoint(half.checkpoint_path)
    assert info["teacher"]["trained_dtype"] == "bfloat16"
    assert info["teacher"]["dtype"] == "float32"  # the dataset's, the one it is served in
    assert info["training_config"]["teacher_dtype"] == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # GistNet stays float32
    _, reference_info = load_checkpoint(reference.checkpoint_path)
    assert reference_info["teacher"]["trained_dtype"] == "float32"


def test_the_training_command_takes_the_teacher_dtype(dataset, tmp_path):
    from tools.train_gistnet import main

    config = tmp_path / "run.yaml"
    config.write_text(
        "preset: substitution\nmodel: {num_heads: 4}\n"
        "training: {batch_size: 4, max_steps: 5, device: cpu, teacher_dtype: float32}\n"
    )
    argv = ["--dataset", dataset, "--config", str(config), "--max-steps", "1",
            "--teacher-dtype", "bfloat16", "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    info = load_checkpoint(tmp_path / "out" / "gistnet.pt")[1]
    assert info["teacher"]["trained_dtype"] == "bfloat16"
    assert info["training_config"]["max_steps"] == 1  # both flags applied, the rest kept
    assert info["training_config"]["batch_size"] == 4


def test_a_compiled_teacher_and_gistnet_train_to_the_eager_losses(dataset, tmp_path, caplog):
    # the eager backend: dynamo captures each layer's graph and runs it, without generating
    # code (inductor's C++ takes a minute a model here; bench.speed --compile measures it)
    eager = _train(dataset, tmp_path / "eager", "float32", max_steps=2)
    with caplog.at_level("INFO", logger="gistnet.train"):
        compiled = _train(dataset, tmp_path / "compiled", "float32", compile=True,
                          compile_backend="eager", max_steps=2)  # fmt: skip
    assert "step 1 took" in caplog.text and "compiling" in caplog.text
    np.testing.assert_allclose(
        [h["loss"] for h in compiled.history], [h["loss"] for h in eager.history], rtol=1e-5
    )
    with pytest.raises(ConfigError, match="compile_backend 'nope' is not one of .*inductor"):
        validate_run_config({"training": {"compile": True, "compile_backend": "nope"}})
    with pytest.raises(ConfigError, match="compile_mode is inductor's"):
        validate_run_config({"training": {"compile": True, "compile_backend": "eager",
                                          "compile_mode": "reduce-overhead"}})  # fmt: skip
