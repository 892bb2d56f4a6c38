"""gistnet.train_request: a training request is checked when it is built and comes back
from its JSON form (the job row's, the launcher's spec) as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gistnet.config import validate_run_config
from gistnet.errors import ConfigError
from gistnet.train_request import TrainRequest, TrainSettings


def settings() -> TrainSettings:
    run = validate_run_config(
        {"model": {"num_heads": 2, "teacher_layers": [0]}, "training": {"max_steps": 7}}
    )
    return TrainSettings(run=run, split="train")


def test_a_request_comes_back_from_its_json_as_it_was(tmp_path):
    request = TrainRequest(
        dataset=tmp_path / "data",
        output_dir=tmp_path / "out",
        settings=settings(),
        tokenizer="samples/teacher",
        resume_path=tmp_path / "resume.pt",
        checkpoint_every=5,
    )
    back = TrainRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert back == request
    assert isinstance(back.dataset, Path) and back.run.model.teacher_layers == (0,)
    # The job row holds the settings alone, in the keys it always had.
    row = json.loads(json.dumps(settings().to_dict()))
    assert set(row) == {"split", "run_config"}
    assert TrainSettings.from_dict(row) == settings()


def test_an_override_is_validated_like_the_run_config(tmp_path):
    assert settings().with_training(max_steps=3).run.training.max_steps == 3
    with pytest.raises(ConfigError, match="max_steps"):
        settings().with_training(max_steps=0)
    with pytest.raises(ConfigError, match="device 'gpu' is not one of"):
        settings().with_training(device="gpu")


def test_a_request_that_does_not_hold_is_refused_where_it_is_built(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_every must be at least 1"):
        TrainRequest(dataset=tmp_path, output_dir=tmp_path, resume_path="r.pt", checkpoint_every=0)
    with pytest.raises(ConfigError, match="checkpoint_every needs resume_path"):
        TrainRequest(dataset=tmp_path, output_dir=tmp_path, checkpoint_every=10)
    with pytest.raises(ConfigError, match="unknown training settings: max_step"):
        TrainSettings.from_dict({"split": "train", "run_config": {}, "max_step": 3})
    with pytest.raises(ConfigError, match="unknown key 'training.max_step'"):
        TrainSettings.from_dict({"run_config": {"training": {"max_step": 3}}})
