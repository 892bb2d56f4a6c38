"""`training.objective: multiblock` through `train_gistnet` and the training command, on
tiny random Llama and GPT-2 teachers made here and token-only datasets written here from
random token documents (no tokenizer): finite losses and a checkpoint that loads, the
one-block case equal to the substitution objective, a dataset too short for its blocks
refused with the fix, and the shipped run config accepted by the command line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers
import yaml

from gistnet.checkpoint import load_checkpoint
from gistnet.config import load_dataset_config, load_run_config, validate_run_config
from gistnet.datasets import open_split
from gistnet.errors import ConfigError
from gistnet.examples import document_examples
from gistnet.inference import GistEncoder
from gistnet.model import GistNet
from gistnet.multiblock import MultiBlockObjective, compressed_blocks_at
from gistnet.shards import make_token_batch
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tools.train_gistnet import main as train_main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RUN = ROOT / "configs" / "runs" / "gistnet_multiblock.yaml"
LONG_DATA = ("long_text_long_teacher.yaml",)

VOCAB, WIDTH, BLOCK = 101, 32, 8
BOS, EOS = 1, 2
POSITIONS = 160  # the shipped config's 16 blocks of 8 and a block of horizon fit
DECODER = {"vocab_size": VOCAB, "bos_token_id": BOS, "eos_token_id": EOS}
TEACHERS = {
    "llama": lambda: transformers.LlamaConfig(
        **DECODER, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        **DECODER, n_embd=WIDTH, n_layer=2, n_head=2, n_positions=POSITIONS
    ),
}  # fmt: skip
# What GistNet reads: the substitution preset's inputs and the BOS sink on Llama, the
# last-layer states alone on GPT-2, so both paths of gistnet_inputs train.
MODELS = {
    "llama": {"token_embeddings": True, "teacher_layers": [0], "bos_sink": True},
    "gpt2": {},
}


@pytest.fixture(scope="module", params=sorted(TEACHERS))
def family(request, tmp_path_factory) -> tuple[str, str]:
    """(family, the folder of its tiny random teacher, saved without a tokenizer)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    transformers.AutoModelForCausalLM.from_config(TEACHERS[request.param]()).save_pretrained(folder)
    return request.param, str(folder)


def write_token_dataset(folder: Path, teacher: str, *, horizon: int, seed: int = 0) -> Path:
    """A token-only dataset of windows of `horizon` tokens, one every block, cut from random
    token documents as preparation cuts them, with our metadata.yaml naming `teacher`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, windows_per_document in (("train", 6), ("validation", 3)):
        documents = [
            rng.integers(3, VOCAB, horizon + (windows_per_document - 1) * BLOCK) for _ in range(2)
        ]
        windows = np.concatenate([document_examples(d, BLOCK, horizon) for d in documents])
        batch = make_token_batch(input_ids=windows[:, :BLOCK], context_input_ids=windows)
        with pa.OSFile(str(folder / f"{name}.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
        splits[name] = {"path": f"{name}.arrow", "examples": len(windows), "documents": 2}
    metadata = {
        "dataset_name": "random-tokens",
        "tokenizer": None,
        "teacher_model": teacher,
        "teacher_dtype": "float32",
        "teacher_states": "none",
        "block_size": BLOCK,
        "horizon": horizon,
        "stride": BLOCK,
        "teacher_hidden_size": WIDTH,
        "vocab_size": VOCAB,
        "fingerprint": f"{seed:016x}",
        "splits": splits,
    }
    (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    return folder


def short_run(family: str, objective: str, **training):
    base = {
        "objective": objective, "batch_size": 4, "lr": 3e-3, "max_steps": 3, "device": "cpu",
        "eval_every": 3, "eval_examples": 6,
    }  # fmt: skip
    model = {"num_heads": 4, **MODELS[family]}
    return validate_run_config({"model": model, "training": {**base, **training}})


def train(dataset: Path, output: Path, run) -> object:
    return train_gistnet(
        TrainRequest(dataset=dataset, output_dir=output, settings=TrainSettings(run=run))
    )


def test_three_multiblock_steps_give_finite_losses_and_a_checkpoint_that_loads(family, tmp_path):
    name, teacher = family
    dataset = write_token_dataset(tmp_path / "data", teacher, horizon=4 * BLOCK)  # 3 blocks + 8
    run = short_run(name, "multiblock", blocks=3, seed=4)
    result = train(dataset, tmp_path / "out", run)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and np.isfinite(result.val_loss)
    # each step compressed the j its seed and step give (seed 4: 2, 3 and 1 blocks), the
    # same in any run of the config
    compressed = [h["compressed_blocks"] for h in result.history]
    assert compressed == [compressed_blocks_at(run.training, step) for step in range(3)]
    assert sorted(compressed) == [1, 2, 3]
    model, info = load_checkpoint(result.checkpoint_path, device=torch.device("cpu"))
    assert info["metrics"]["objective"] == "multiblock" and info["training_config"]["blocks"] == 3
    assert info["teacher"]["model"] == teacher
    torch.manual_seed(run.training.seed)
    initial = GistNet(model.config).state_dict()
    # the compressed side's gradient reached GistNet through the frozen teacher
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items())
    # the gists it trained on are the ones the gist engine makes of each block alone
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    windows = torch.tensor(open_split(dataset).context_input_ids[:4], dtype=torch.long)
    objective = MultiBlockObjective(encoder.teacher, run.training, encoder.model.config)
    with torch.no_grad():
        trained = objective.gists(encoder.model, windows, 3)  # (4, 3, 1, D)
    served = encoder.encode(windows[:, : 3 * BLOCK].reshape(12, BLOCK))  # (12, D)
    torch.testing.assert_close(trained, served.reshape(4, 3, 1, WIDTH), atol=1e-6, rtol=0)


def test_one_block_compressed_is_the_substitution_objectives_kl(family, tmp_path):
    """With one block, compressed, the window is the single-block example: the same
    losses step by step and on validation as `objective: substitution` with its plain KL
    (rest_weight 1, nll_weight 0), on the same batches from the same initial weights."""
    name, teacher = family
    dataset = write_token_dataset(tmp_path / "data", teacher, horizon=2 * BLOCK)
    multiblock = train(dataset, tmp_path / "m", short_run(name, "multiblock", compressed_blocks=1))
    substitution = train(dataset, tmp_path / "s", short_run(name, "substitution"))
    want = [h["kl"] for h in substitution.history]
    assert want == [h["loss"] for h in substitution.history]  # the loss is the KL alone
    np.testing.assert_allclose([h["loss"] for h in multiblock.history], want, rtol=1e-4)
    # the validation KL is small (about 6e-4 here): float32 sums taken in another order
    # (another thread count) move it by about 1e-4 of itself
    assert multiblock.val_loss == pytest.approx(substitution.val_loss, rel=1e-3)
    assert len(set(want)) > 1  # the steps trained: the equality is not of a constant


def test_a_dataset_too_short_for_its_blocks_is_refused_naming_both_and_the_fix(tmp_path):
    # 4 blocks of 8 fill a window of 32 tokens and leave no horizon after them
    dataset = write_token_dataset(tmp_path / "data", "unused-teacher", horizon=4 * BLOCK)
    with pytest.raises(ConfigError) as refused:
        train(dataset, tmp_path / "out", short_run("gpt2", "multiblock", blocks=4))
    message = str(refused.value)
    assert "training.blocks 4" in message and "windows are 32 tokens" in message
    assert "prepare it with horizon >= 40" in message and "blocks to at most 3" in message
    assert not (tmp_path / "out").exists()  # refused before any teacher or model was built


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"objective": "substitution", "blocks": 4}, "objective substitution reads one block"),
        ({"objective": "mse", "compressed_blocks": 1}, "objective mse reads one block"),
        ({"objective": "multiblock", "blocks": 2, "compressed_blocks": 3}, "exceeds blocks (2)"),
        ({"objective": "multiblock", "nll_weight": 0.3}, "the multiblock objective is the KL"),
        ({"objective": "multiblock", "blocks": 0}, "training.blocks"),
    ],
)
def test_multiblock_keys_out_of_place_are_refused_saying_why(training, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate_run_config({"training": training})


def test_the_shipped_configs_parse_and_the_long_windows_hold_the_runs_blocks():
    run = load_run_config(SHIPPED_RUN)
    assert run.training.objective == "multiblock" and run.model.bos_sink  # the preset's model
    for name in LONG_DATA:
        data = load_dataset_config(ROOT / "configs" / "data" / name)
        assert data.teacher_states == "none"
        assert data.horizon >= (run.training.blocks + 1) * data.block_size


def test_the_training_command_trains_the_shipped_config_and_refuses_short_windows(
    family, tmp_path, capsys
):
    name, teacher = family
    blocks = load_run_config(SHIPPED_RUN).training.blocks
    horizon = (blocks + 1) * BLOCK  # the shipped blocks and one block of horizon
    assert horizon <= POSITIONS
    fits = write_token_dataset(tmp_path / "fits", teacher, horizon=horizon)
    argv = ["--config", str(SHIPPED_RUN), "--max-steps", "1", "--log-every", "1"]
    out = tmp_path / "out"
    assert train_main(["--dataset", str(fits), "--output-dir", str(out), *argv]) == 0
    printed = capsys.readouterr().out
    assert "step      1/1" in printed and "compressed_blocks" in printed
    assert (
        load_checkpoint(out / "gistnet.pt", device=torch.device("cpu"))[1]["metrics"]["objective"]
        == "multiblock"
    )
    short = write_token_dataset(tmp_path / "short", teacher, horizon=4 * BLOCK)
    assert train_main(["--dataset", str(short), "--output-dir", str(tmp_path / "x"), *argv]) == 2
    error = capsys.readouterr().err
    assert f"training.blocks {blocks}" in error and f"horizon >= {horizon}" in error
