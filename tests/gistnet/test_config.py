"""Run and dataset configs (gistnet/config.py): loading, validation, presets, and the
options that were taken out."""

from __future__ import annotations

import pytest

from gistnet.config import (
    DEFAULT_LOG_EVERY,
    REMOVED_IN_COMMIT,
    load_run_config,
    load_run_file,
    validate_run_config,
)
from gistnet.errors import ConfigError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("training", "named"),
    [
        ({"reconstruction_weight": 0.1}, "reconstruction_weight was removed"),
        (
            {"objective": "substitution", "reconstruction_steps": 400},
            "reconstruction_steps was removed",
        ),
        (
            {"horizon_weighting": "block_dependence"},
            "horizon_weighting: block_dependence was removed",
        ),
    ],
)
def test_a_removed_option_is_refused_with_why_and_where_the_code_is(training, named):
    with pytest.raises(ConfigError) as err:
        validate_run_config({"training": training})
    message = str(err.value)
    assert named in message and "docs/quality.md" in message
    assert f"commit {REMOVED_IN_COMMIT}" in message and "unknown key" not in message


def test_a_run_file_naming_a_removed_option_is_refused_on_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  objective: substitution\n  reconstruction_weight: 0.0\n")
    with pytest.raises(ConfigError, match="training: reconstruction_weight was removed"):
        load_run_config(path)


def test_uniform_horizon_weighting_is_still_accepted_and_other_values_are_not():
    assert validate_run_config({"training": {"horizon_weighting": "uniform"}})
    with pytest.raises(ConfigError, match="horizon_weighting"):
        validate_run_config({"training": {"horizon_weighting": "late"}})


def test_a_run_files_log_cadence_is_the_command_lines_not_the_runs(tmp_path):
    run, log_every = load_run_file(ROOT / "configs/runs/gistnet_example.yaml")
    assert log_every == 50 and "log_every" not in run.training.model_dump()
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  max_steps: 5\n")
    assert load_run_file(path)[1] == DEFAULT_LOG_EVERY
    path.write_text("training:\n  log_every: 0\n")
    with pytest.raises(ConfigError, match="training.log_every must be a whole number"):
        load_run_file(path)


def test_a_run_given_as_data_takes_no_log_cadence():
    with pytest.raises(ConfigError, match="log_every is how often the command line prints"):
        validate_run_config({"training": {"log_every": 10}})
