"""gistnet.client_configs: a config file as the client sends it: local sources become
uploads, model folders absolute paths, and what is the server's or the terminal's left out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gistnet.client_configs import content_type, load_dataset_config, load_run_config
from gistnet.errors import GistNetError
from tests.gistnet.test_client import write_corpus_config


def test_a_config_file_turns_into_uploads_and_absolute_model_folders(tmp_path):
    config, files = load_dataset_config(write_corpus_config(tmp_path, "x"))
    assert files == {
        "train": [tmp_path / "corpus/train.jsonl"],
        "validation": [tmp_path / "corpus/held_out_0.txt", tmp_path / "corpus/held_out_1.txt"],
    }
    assert config["splits"] == {"train": {}, "validation": {}}  # output_path is the server's
    assert Path(config["teacher_model"]).is_absolute()


def test_a_source_that_matches_nothing_here_is_left_for_the_server(tmp_path):
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump({"splits": {"train": {"source": "corpus/*.jsonl"}}}))
    config, files = load_dataset_config(path)
    assert files == {} and config["splits"]["train"]["source"] == "corpus/*.jsonl"


def test_a_run_config_leaves_the_terminals_log_cadence_out(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"training": {"max_steps": 5, "log_every": 1}}))
    assert load_run_config(path) == {"training": {"max_steps": 5}}


@pytest.mark.parametrize("loader", [load_dataset_config, load_run_config])
def test_a_file_that_is_not_a_mapping_is_refused_naming_it(tmp_path, loader):
    path = tmp_path / "config.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(GistNetError, match=f"{path}: a .* config must be a mapping"):
        loader(path)


def test_uploads_are_sent_as_jsonl_or_plain_text():
    assert content_type(Path("a/train.jsonl")) == "application/jsonl"
    assert content_type("held_out.txt") == "text/plain"
