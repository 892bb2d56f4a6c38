"""Run and dataset configs (gistnet/config.py): loading, validation, presets, and the
options that were taken out."""

from __future__ import annotations

import pytest

from gistnet.config import (
    DEFAULT_LOG_EVERY,
    REMOVED_IN_COMMIT,
    GistNetConfig,
    load_run_config,
    load_run_file,
    validate_run_config,
)
from gistnet.errors import ConfigError
from gistnet.model import GistNet
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


# The five model flags the substitution configs set by hand before the preset named them.
HAND_WRITTEN_SUBSTITUTION_MODEL = {
    "token_embeddings": True,
    "teacher_layers": [0],
    "pool_queries": 4,
    "gist_mlp": True,
    "bos_sink": True,
}


def _parameters(config: GistNetConfig) -> int:
    return sum(p.numel() for p in GistNet(config).parameters())


def test_the_substitution_preset_builds_the_model_the_hand_written_flags_did():
    shape = {"hidden_size": 128, "block_size": 32, "num_heads": 4}
    by_hand = GistNetConfig(**shape, **HAND_WRITTEN_SUBSTITUTION_MODEL)
    preset = GistNetConfig.preset("substitution", **shape)
    assert preset == by_hand
    assert _parameters(preset) == _parameters(by_hand) > _parameters(GistNetConfig(**shape))
    run = validate_run_config({"preset": "substitution", "model": shape})
    assert run.model == by_hand
    assert run.training.objective == "substitution" and run.training.lr == 3e-3


@pytest.mark.parametrize("k", [1, 2, 4])
def test_the_shipped_substitution_configs_resolve_to_their_hand_written_settings(k):
    name = "gistnet_substitution" + ("" if k == 1 else f"_k{k}")
    run, _ = load_run_file(ROOT / "configs" / "runs" / f"{name}.yaml")
    assert run.preset == "substitution"
    assert run.model == GistNetConfig(
        num_heads=4, gists_per_block=k, **HAND_WRITTEN_SUBSTITUTION_MODEL
    )
    assert run.training.objective == "substitution" and run.training.lr == 3e-3


def test_a_key_the_config_sets_wins_over_the_preset():
    run = validate_run_config(
        {
            "preset": "substitution",
            "model": {"bos_sink": False, "pool_queries": 2},
            "training": {"objective": "mse", "lr": 1e-3},
        }
    )
    assert run.model.bos_sink is False and run.model.pool_queries == 2
    assert run.model.token_embeddings is True and run.model.teacher_layers == (0,)
    assert run.training.objective == "mse" and run.training.lr == 1e-3
    assert GistNetConfig.preset("substitution", teacher_layers=[]).teacher_layers == ()


def test_an_unknown_preset_is_refused_naming_the_known_ones():
    with pytest.raises(
        ConfigError, match="unknown preset 'substitutoin': the presets are substitution"
    ):
        validate_run_config({"preset": "substitutoin"})
    with pytest.raises(ConfigError, match="the presets are substitution"):
        GistNetConfig.preset("best")


def test_the_command_line_refuses_an_unknown_preset_with_the_known_ones(tmp_path, capsys):
    from tools.train_gistnet import main as train_main

    config = tmp_path / "run.yaml"
    config.write_text("preset: fastest\ntraining:\n  max_steps: 5\n")
    assert train_main(["--dataset", str(tmp_path), "--config", str(config)]) == 2
    assert "unknown preset 'fastest': the presets are substitution" in capsys.readouterr().err


def test_without_a_preset_the_seeds_and_the_demos_configs_mean_what_they_did():
    example, _ = load_run_file(ROOT / "configs" / "runs" / "gistnet_example.yaml")
    assert example.preset is None and example.training.objective == "mse"
    assert example.model == GistNetConfig(hidden_size=128, block_size=32, num_heads=4)
    demo, _ = load_run_file(ROOT / "configs" / "runs" / "gistnet_demo.yaml")
    assert demo.model == GistNetConfig(hidden_size=128, block_size=32, num_heads=4)
    assert demo.training.model_dump() == {
        "batch_size": 64, "lr": 3e-3, "max_steps": 200, "device": "auto", "seed": 0,
        "warmup": 30, "final_lr_ratio": 0.1, "weight_decay": 0.0, "grad_clip": 1.0,
        "objective": "substitution", "nll_weight": 0.0, "horizon_weighting": "uniform",
        "rest_weight": 1.0, "eval_every": 1000, "eval_examples": 256, "processes": 1,
    }  # fmt: skip
