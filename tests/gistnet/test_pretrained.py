"""gistnet.pretrained: a checkpoint as a Hugging Face style folder that loads where a
checkpoint loads, gives the same gists, carries its card, and is tied to its teacher; every
training run writes one beside its checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from gistnet.checkpoint import export_pretrained, load_checkpoint, read_checkpoint_info
from gistnet.config import validate_run_config
from gistnet.errors import ShardError
from gistnet.inference import GistEncoder
from gistnet.pretrained import (
    CARD_NAME,
    CONFIG_NAME,
    RUN_NAME,
    WEIGHTS_NAME,
    TeacherMismatch,
    teacher_weights_sha256,
)
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import SAMPLE_TEACHER

BLOCKS = torch.tensor([[5] * 32, list(range(3, 35))])


def _train(dataset, out, *, seed: int = 0):
    run = validate_run_config(
        {"training": {"max_steps": 2, "batch_size": 4, "device": "cpu", "seed": seed}}
    )
    return train_gistnet(
        TrainRequest(
            dataset=dataset / "train.arrow", output_dir=out, settings=TrainSettings(run=run)
        )
    )


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    return _train(small_dataset, tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(scope="module")
def checkpoint(trained):
    return trained.checkpoint_path


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    report = {
        "n_examples": 12,
        "bootstrap_samples": 100,
        "conditions": {"gist": {"gap_recovered": {"value": 0.61, "ci95": [0.55, 0.66]}}},
    }
    return export_pretrained(
        checkpoint, tmp_path_factory.mktemp("export") / "gistnet-1", evaluation=report
    )


def test_a_checkpoint_records_its_teachers_weights(checkpoint):
    recorded = read_checkpoint_info(checkpoint)["teacher"]["weights_sha256"]
    assert recorded == teacher_weights_sha256(SAMPLE_TEACHER) and len(recorded) == 64


def test_the_folder_holds_what_other_tools_read_and_loads_as_the_checkpoint(checkpoint, folder):
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, RUN_NAME, CARD_NAME]
    )
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_config"]["block_size"] == 32
    assert (
        config["dataset"]["fingerprint"]
        == read_checkpoint_info(checkpoint)["dataset"]["fingerprint"]
    )
    model, _ = load_checkpoint(checkpoint)
    weights = load_file(str(folder / WEIGHTS_NAME))  # safetensors' own reader
    assert weights.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor)
    from_folder = GistEncoder.from_checkpoint(folder).encode(BLOCKS)
    assert torch.equal(from_folder, GistEncoder.from_checkpoint(checkpoint).encode(BLOCKS))


def test_the_card_names_the_teacher_dataset_and_latest_figures(folder):
    card = (folder / CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: gistnet\nbase_model: ")
    assert "| gist | n/a | n/a | 0.610 [0.550, 0.660] |" in card
    assert "python -m tools.train_gistnet --dataset" in card and f"--config {RUN_NAME}" in card


def test_a_teacher_with_other_weights_is_refused(folder, tmp_path):
    other = tmp_path / "teacher"
    shutil.copytree(SAMPLE_TEACHER, other)
    (weights,) = other.glob("*.safetensors")
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(TeacherMismatch, match="other weights than the teacher this GistNet"):
        GistEncoder.from_checkpoint(folder, teacher_model=str(other))
    unchanged = tmp_path / "same"
    shutil.copytree(SAMPLE_TEACHER, unchanged)  # the same weights elsewhere are the teacher
    GistEncoder.from_checkpoint(folder, teacher_model=str(unchanged))


def test_a_damaged_folder_names_its_file(folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / WEIGHTS_NAME).write_bytes((broken / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(ShardError, match=f"{WEIGHTS_NAME} cannot be read"):
        load_checkpoint(broken)
    (broken / CONFIG_NAME).write_text('{"format": "something else"}')
    with pytest.raises(ShardError, match="is not a GistNet folder"):
        load_checkpoint(broken)


def test_gistnet_export_writes_the_folder_and_keeps_an_existing_one(checkpoint, tmp_path, capsys):
    from tools.cli import main

    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / WEIGHTS_NAME).is_file()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m")]) == 2
    assert "exists: name a new folder" in capsys.readouterr().err


def test_the_model_saves_and_loads_itself_as_a_folder(checkpoint, tmp_path):
    from gistnet.model import GistNet

    model, info = load_checkpoint(checkpoint)
    folder = model.save_pretrained(tmp_path / "m", info=info)
    again = GistNet.from_pretrained(folder)
    assert again.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)
    assert read_checkpoint_info(folder)["teacher"] == info["teacher"]


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_training_run_writes_its_folder_beside_the_checkpoint(trained):
    from gistnet.model import GistNet

    folder = trained.pretrained_path
    assert folder == trained.checkpoint_path.parent / "gistnet"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_NAME, WEIGHTS_NAME, RUN_NAME, CARD_NAME]
    )
    assert sorted(p.name for p in folder.parent.iterdir()) == ["gistnet", "gistnet.pt"]
    model, info = load_checkpoint(trained.checkpoint_path)
    assert _same_weights(GistNet.from_pretrained(folder).state_dict(), model.state_dict())
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["teacher"]["weights_sha256"] == teacher_weights_sha256(SAMPLE_TEACHER)
    assert config["dataset"] == info["dataset"] and config["metrics"] == info["metrics"]
    assert yaml.safe_load((folder / RUN_NAME).read_text())["training"]["max_steps"] == 2
    assert "No evaluation yet" in (folder / CARD_NAME).read_text()
    # Every reader of a checkpoint takes the folder: the same gists.
    assert torch.equal(
        GistEncoder.from_checkpoint(folder).encode(BLOCKS),
        GistEncoder.from_checkpoint(trained.checkpoint_path).encode(BLOCKS),
    )


def test_a_run_again_into_the_same_folder_replaces_its_model_folder(small_dataset, tmp_path):
    from gistnet.model import GistNet

    first = _train(small_dataset, tmp_path)
    before = GistNet.from_pretrained(first.pretrained_path).state_dict()
    (tmp_path / "gistnet.tmp").mkdir()  # what a run killed mid-save leaves behind
    again = _train(small_dataset, tmp_path, seed=1)
    model, _ = load_checkpoint(again.checkpoint_path)
    after = GistNet.from_pretrained(again.pretrained_path).state_dict()
    assert _same_weights(after, model.state_dict()) and not _same_weights(after, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gistnet", "gistnet.pt"]
