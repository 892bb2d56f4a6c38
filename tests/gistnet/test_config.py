"""Run and dataset configs (gistnet/config.py): loading and validation, presets, the
command line's log cadence, and the options that were taken out."""

from __future__ import annotations

import pytest

from gistnet.config import (
    DEFAULT_LOG_EVERY,
    REMOVED_IN_COMMIT,
    GistNetConfig,
    load_dataset_config,
    load_run_config,
    load_run_file,
    validate_dataset_config,
    validate_run_config,
)
from gistnet.errors import ConfigError
from gistnet.model import GistNet
from tests.conftest import ROOT, small_dataset_config

# --------------------------------------------------------------------------- dataset configs


def test_the_shipped_sample_dataset_config_is_valid():
    config = load_dataset_config(ROOT / "configs" / "data" / "sample_text.yaml")
    assert set(config.splits) == {"train", "validation"}
    assert config.block_size == 32 and config.horizon == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"horizon": 48}, "horizon (48) must be a multiple of block_size (32)"),
        ({"teacher_dtype": "float8"}, "teacher_dtype"),
        ({"teacher_device": "gpu"}, "device 'gpu' is not one of"),
        ({"splits": {"train": {"name": "valid", "documents": ["x"]}}}, "must match"),
        ({"splits": {"train": {"source": "a.txt", "documents": ["x"]}}}, "exactly one of"),
    ],
)
def test_a_bad_dataset_config_names_the_problem(change, message):
    with pytest.raises(ConfigError) as err:
        validate_dataset_config(small_dataset_config(**change))
    assert message in str(err.value)


def test_a_stride_longer_than_a_block_is_refused():
    with pytest.raises(ConfigError, match=r"stride \(40\) must be at most block_size \(32\)"):
        validate_dataset_config(small_dataset_config(stride=40))
    with pytest.raises(ConfigError, match="stride"):
        validate_dataset_config(small_dataset_config(stride=0))


def test_a_split_stride_longer_than_a_block_is_refused_naming_the_split():
    config = small_dataset_config()
    config["splits"]["train"]["stride"] = 40
    with pytest.raises(ConfigError, match=r"splits.train.stride \(40\) must be at most block_size"):
        validate_dataset_config(config)


def test_max_tokens_cannot_be_combined_with_shards():
    config = small_dataset_config()
    config["splits"]["train"].update(shards=2, max_tokens=1000)
    with pytest.raises(ConfigError, match=r"max_tokens .* cannot be combined with shards \(2\)"):
        validate_dataset_config(config)


@pytest.mark.parametrize("name", ["../../x/owned", "/abs", "../20/train", "a/b", "x" * 65, ""])
def test_a_split_name_that_is_a_path_is_refused(name):
    config = {
        "dataset_name": "d",
        "tokenizer": "t",
        "teacher_model": "t",
        "splits": {name: {"documents": ["x"]}},
    }
    with pytest.raises(ConfigError, match="split name .* is not allowed"):
        validate_dataset_config(config)


# --------------------------------------------------------------------------- run configs


def test_a_model_section_is_checked_as_the_models_config():
    run = validate_run_config({"model": {"num_heads": 2, "num_layers": 2}})
    assert isinstance(run.model, GistNetConfig) and run.model.hidden_size is None
    with pytest.raises(ConfigError, match="unknown key 'model.num_head'"):
        validate_run_config({"model": {"num_head": 2}})
    with pytest.raises(ConfigError, match=r"model: hidden_size \(100\) is not divisible"):
        validate_run_config({"model": {"hidden_size": 100, "num_heads": 8}})
    with pytest.raises(ConfigError, match="num_layers must be at least 1"):
        validate_run_config({"model": {"num_layers": 0}})


def test_a_width_not_divisible_by_the_heads_names_both_numbers():
    with pytest.raises(
        ConfigError, match=r"hidden_size \(100\) is not divisible by num_heads \(8\)"
    ):
        GistNetConfig(hidden_size=100, num_heads=8)


def test_more_vectors_than_tokens_are_refused():
    with pytest.raises(ConfigError, match="gists_per_block"):
        GistNetConfig(hidden_size=64, block_size=4, num_heads=4, gists_per_block=5)
    with pytest.raises(ConfigError, match="gists_per_block"):
        validate_run_config({"model": {"gists_per_block": 0}})


def test_bad_teacher_layer_lists_are_refused():
    for layers, message in (([-1], ">= 0"), ([1, 1], "twice")):
        with pytest.raises(ConfigError, match=message):
            validate_run_config({"model": {"teacher_layers": layers}})
    assert validate_run_config({"model": {"teacher_layers": [2, 0]}}).model.teacher_layers == (2, 0)


def test_a_rest_weight_needs_the_substitution_objective_and_a_positive_value():
    with pytest.raises(ConfigError, match="needs objective: substitution"):
        validate_run_config({"training": {"objective": "mse", "rest_weight": 2.0}})
    with pytest.raises(ConfigError, match="rest_weight"):
        validate_run_config({"training": {"objective": "substitution", "rest_weight": 0}})
    shipped = validate_run_config({"training": {"objective": "substitution", "rest_weight": 2.5}})
    assert shipped.training.rest_weight == 2.5


def test_the_teachers_training_dtype_is_one_of_four_and_auto_by_default():
    assert validate_run_config({}).training.teacher_dtype == "auto"
    for dtype in ("float32", "bfloat16", "float16"):
        assert (
            validate_run_config({"training": {"teacher_dtype": dtype}}).training.teacher_dtype
            == dtype
        )
    with pytest.raises(ConfigError) as err:
        validate_run_config({"training": {"teacher_dtype": "int8"}})
    assert "training.teacher_dtype" in str(err.value)
    assert all(
        name in str(err.value) for name in ("'auto'", "'float32'", "'bfloat16'", "'float16'")
    )


# --------------------------------------------------------------------------- removed options


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


# --------------------------------------------------------------------------- log cadence


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


# --------------------------------------------------------------------------- presets

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
        "objective": "substitution", "blocks": 1, "compressed_blocks": None, "nll_weight": 0.0,
        "horizon_weighting": "uniform",
        "rest_weight": 1.0, "reconstruct_weight": 0.0, "eval_every": 1000, "eval_examples": 256, "processes": 1,
        "activation_checkpointing": False, "teacher_dtype": "auto", "compile": False,
        "compile_backend": "inductor", "compile_mode": None,
    }  # fmt: skip
