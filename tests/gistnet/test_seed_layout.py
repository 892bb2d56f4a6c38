"""Datasets written by the seed's own tool: variable-length list columns, the seed's
metadata form, or no metadata at all. They open, describe, train, evaluate and serve."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from gistnet.checkpoint import load_checkpoint, read_checkpoint_info
from gistnet.config import validate_run_config
from gistnet.datasets import describe_dataset
from gistnet.errors import ConfigError, ShardError
from gistnet.inference import GistEncoder
from gistnet.pretrained import teacher_weights_sha256
from gistnet.shards import open_shard
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import SAMPLE_TEACHER
from tests.gistnet.evaluation import evaluate
from tests.seed_layout import seed_rows, write_seed_shard


def run_config(objective: str = "mse", steps: int = 6):
    return validate_run_config(
        {
            "model": {"num_heads": 4},
            "training": {
                "batch_size": 8,
                "max_steps": steps,
                "device": "cpu",
                "objective": objective,
                "eval_every": steps,
                "eval_examples": 16,
            },
        }
    )


# --- reading ---------------------------------------------------------------------------


def test_seed_shard_gives_the_same_arrays_as_ours_as_views_of_the_file(seed_dataset, small_dataset):
    ours = open_shard(small_dataset / "train.arrow")
    seed = open_shard(seed_dataset / "train.arrow")
    assert pa.types.is_list(seed.table.schema.field("teacher_hidden").type)  # variable-length
    np.testing.assert_array_equal(seed.input_ids, ours.input_ids)
    np.testing.assert_array_equal(seed.context_input_ids, ours.context_input_ids)
    np.testing.assert_array_equal(seed.teacher_hidden, np.asarray(ours.teacher_hidden))
    np.testing.assert_array_equal(seed.gist_target, ours.gist_target)
    assert seed.input_ids.dtype == np.int32  # the seed's int64 ids, converted
    # the states are the file's flattened values, reshaped: no copy, no Python lists
    assert not seed.teacher_hidden.flags.owndata and not seed.teacher_hidden.flags.writeable


@pytest.mark.parametrize(
    ("column", "row", "item", "message"),
    [
        ("input_ids", 3, None, "row 3 of column 'input_ids' has 31 values where 32"),
        ("teacher_hidden", 7, None, "row 7 of column 'teacher_hidden' has 31 values where 32"),
        ("teacher_hidden", 5, 2, "row 5 of column 'teacher_hidden' has 127 values in its item 2"),
        ("gist_target", 0, None, "row 0 of column 'gist_target' has 127 values where 128"),
    ],
)
def test_a_row_of_the_wrong_length_names_the_row_and_the_column(
    small_dataset, tmp_path, column, row, item, message
):
    rows = seed_rows(small_dataset / "validation.arrow", limit=12)
    if item is None:
        rows[column][row] = rows[column][row][:-1]
    else:
        rows[column][row][item] = rows[column][row][item][:-1]
    path = write_seed_shard(rows, tmp_path / "bad.arrow")
    with pytest.raises(ShardError, match=message):
        open_shard(path)


def test_a_shard_prepared_without_a_teacher_is_refused_with_the_reason(small_dataset, tmp_path):
    rows = seed_rows(small_dataset / "validation.arrow", limit=4)
    rows["teacher_hidden"] = [[] for _ in rows["teacher_hidden"]]  # the seed's teacher_model: null
    rows["gist_target"] = [[] for _ in rows["gist_target"]]
    path = write_seed_shard(rows, tmp_path / "no_teacher.arrow")
    with pytest.raises(ShardError, match="prepared without a teacher"):
        open_shard(path)


# --- training, evaluating, serving -------------------------------------------------------


def test_training_on_a_seed_dataset_with_its_metadata(seed_dataset, tmp_path):
    result = train_gistnet(
        TrainRequest(
            dataset=seed_dataset / "train.arrow",
            output_dir=tmp_path,
            settings=TrainSettings(run=run_config()),
        )
    )
    assert result.val_loss is not None  # validation.arrow beside it was found and scored
    info = read_checkpoint_info(result.checkpoint_path)
    described = describe_dataset(seed_dataset)
    assert info["dataset"]["fingerprint"] == described["fingerprint"]
    assert info["teacher"] == {
        "model": described["teacher_model"],
        "dtype": "float32",
        "weights_sha256": teacher_weights_sha256(described["teacher_model"]),
    }
    assert info["hidden_size"] == 128 and info["block_size"] == 32

    # served: the engine runs the teacher the seed's metadata names on the token ids
    encoder = GistEncoder.from_checkpoint(result.checkpoint_path)
    assert encoder.tokenize("Mara found a lantern.")  # the tokenizer the metadata names
    shard = open_shard(seed_dataset / "validation.arrow")
    model, _ = load_checkpoint(result.checkpoint_path)
    with torch.no_grad():
        expected = model(torch.from_numpy(shard.teacher_hidden[:4].copy()))
    from_tokens = encoder.encode(torch.from_numpy(shard.input_ids[:4]).long())
    torch.testing.assert_close(from_tokens, expected, atol=1e-5, rtol=1e-5)

    report = evaluate(
        result.checkpoint_path,
        seed_dataset,
        device="cpu",
        max_examples=16,
        bootstrap_samples=20,
    )
    assert report["n_examples"] == 16 and report["dataset"]["metadata_form"] == "seed"
    assert report["teacher"] == described["teacher_model"]


def test_substitution_without_metadata_needs_the_teacher_and_names_how_to_give_it(
    seed_shard_alone, tmp_path
):
    with pytest.raises(ConfigError, match="--teacher") as err:
        train_gistnet(
            TrainRequest(
                dataset=seed_shard_alone,
                output_dir=tmp_path,
                settings=TrainSettings(run=run_config("substitution")),
            )
        )
    assert "teacher_model" in str(err.value)

    result = train_gistnet(
        TrainRequest(
            dataset=seed_shard_alone,
            output_dir=tmp_path,
            settings=TrainSettings(run=run_config("substitution", steps=2)),
            teacher_model=str(SAMPLE_TEACHER),
            tokenizer=str(SAMPLE_TEACHER),
        )
    )
    info = read_checkpoint_info(result.checkpoint_path)
    assert info["teacher"]["model"] == str(SAMPLE_TEACHER.resolve())
    assert info["metrics"]["objective"] == "substitution"
    # evaluation finds the teacher in the checkpoint when the dataset names none
    report = evaluate(
        result.checkpoint_path,
        seed_shard_alone,
        device="cpu",
        max_examples=8,
        bootstrap_samples=10,
    )
    assert report["teacher"] == str(SAMPLE_TEACHER.resolve())


def test_mse_without_metadata_trains_and_the_engine_asks_for_the_teacher(
    seed_shard_alone, tmp_path
):
    result = train_gistnet(
        TrainRequest(
            dataset=seed_shard_alone, output_dir=tmp_path, settings=TrainSettings(run=run_config())
        )
    )
    info = read_checkpoint_info(result.checkpoint_path)
    assert info["teacher"]["model"] is None and info["tokenizer"] is None
    with pytest.raises(ConfigError, match="--teacher and --tokenizer"):
        GistEncoder.from_checkpoint(result.checkpoint_path)
    with pytest.raises(ConfigError, match="--teacher"):
        evaluate(result.checkpoint_path, seed_shard_alone, device="cpu")

    encoder = GistEncoder.from_checkpoint(result.checkpoint_path, teacher_model=str(SAMPLE_TEACHER))
    shard = open_shard(seed_shard_alone)
    gists = encoder.encode(torch.from_numpy(shard.input_ids[:4]).long())
    assert gists.shape == (4, 128)
    with pytest.raises(ConfigError, match="does not name its tokenizer"):
        encoder.tokenize("a story")
