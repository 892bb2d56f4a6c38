"""Windows cut with a stride shorter than a block: more training examples from the same
text, and documents still known to every reader of the shard."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from gistnet.config import validate_dataset_config, validate_run_config
from gistnet.data import dataset_fingerprint, prepare_dataset
from gistnet.datasets import open_split
from gistnet.errors import ConfigError
from gistnet.shards import open_shard
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import ROOT, small_dataset_config
from tests.gistnet.evaluation import evaluate


@pytest.mark.parametrize("states", ["cache", "none"])
def test_strided_shards_know_their_documents(tmp_path, states):
    config = validate_dataset_config(small_dataset_config(stride=8, teacher_states=states))
    prepare_dataset(config, output_dir=tmp_path)
    meta = yaml.safe_load((tmp_path / "metadata.yaml").read_text())
    assert meta["stride"] == 8
    split = open_split(tmp_path, "validation")
    assert split.stride == 8
    ctx = np.asarray(split.context_input_ids[np.arange(split.num_examples)])
    # successive windows of one document overlap by 64 - 8 tokens
    doc_ids = split.document_ids()
    same = doc_ids[1:] == doc_ids[:-1]
    np.testing.assert_array_equal(ctx[1:][same][:, :56], ctx[:-1][same][:, 8:])
    assert doc_ids[-1] + 1 == len(small_dataset_config()["splits"]["validation"]["documents"])
    if states == "cache":
        assert open_shard(tmp_path / "validation.arrow").stride == 8
        np.testing.assert_array_equal(
            open_shard(tmp_path / "validation.arrow").document_ids(), doc_ids
        )


def test_long_windows_side_by_side_keep_their_documents_and_skip_no_text(tmp_path):
    # windows of 4 blocks every 3 blocks, as the long-document evaluation reads a page:
    # each overlaps the next by one block, so the document chain holds
    config = small_dataset_config(horizon=128, stride=96, teacher_states="none")
    prepare_dataset(validate_dataset_config(config), output_dir=tmp_path)
    split = open_split(tmp_path, "validation")
    assert split.stride == 96
    ctx = np.asarray(split.context_input_ids[np.arange(split.num_examples)])
    doc_ids = split.document_ids()
    same = doc_ids[1:] == doc_ids[:-1]
    assert same.any() and doc_ids[-1] + 1 == len(config["splits"]["validation"]["documents"])
    np.testing.assert_array_equal(ctx[1:][same][:, :32], ctx[:-1][same][:, 96:])
    # a stride of the whole window (nothing to chain), or off the block grid, is refused
    for stride in (128, 40):
        with pytest.raises(ConfigError, match=rf"stride \({stride}\) must be at most block_size"):
            validate_dataset_config(small_dataset_config(horizon=128, stride=stride))


def test_the_stride_enters_the_fingerprint_only_when_it_changes_the_data():
    plain = validate_dataset_config(small_dataset_config())
    one_block = validate_dataset_config(small_dataset_config(stride=32))
    dense = validate_dataset_config(small_dataset_config(stride=4))
    assert dataset_fingerprint(plain, ROOT) == dataset_fingerprint(one_block, ROOT)
    assert dataset_fingerprint(plain, ROOT) != dataset_fingerprint(dense, ROOT)


def test_training_on_dense_windows_is_scored_on_the_plain_split(small_dataset, tmp_path):
    dense = tmp_path / "dense"
    prepare_dataset(
        validate_dataset_config(small_dataset_config(stride=4, teacher_states="none")),
        output_dir=dense,
    )
    assert open_split(dense, "train").num_examples > 7 * open_split(small_dataset).num_examples
    run = validate_run_config(
        {
            "model": {"num_heads": 4, "token_embeddings": True, "pool_queries": 2},
            "training": {
                "objective": "substitution",
                "batch_size": 8,
                "max_steps": 3,
                "device": "cpu",
                "eval_every": 3,
                "eval_examples": 8,
            },
        }
    )
    result = train_gistnet(
        TrainRequest(dataset=dense, output_dir=tmp_path / "run", settings=TrainSettings(run=run))
    )
    report = evaluate(
        result.checkpoint_path,
        small_dataset,
        split="validation",
        device="cpu",
        bootstrap_samples=20,
    )
    assert report["n_examples"] == open_shard(small_dataset / "validation.arrow").num_examples
    assert np.isfinite(report["conditions"]["gist"]["gap_recovered"]["value"])


def test_documents_are_found_when_the_horizon_is_one_block(tmp_path):
    # windows of one block at stride 8 overlap by 24 tokens: the chain still holds
    config = small_dataset_config(horizon=32, stride=8, teacher_states="none")
    prepare_dataset(validate_dataset_config(config), output_dir=tmp_path)
    doc_ids = open_split(tmp_path, "validation").document_ids()
    assert doc_ids[-1] + 1 == len(config["splits"]["validation"]["documents"])


def test_a_split_of_its_own_stride_is_cut_densely_beside_one_window_per_block(tmp_path):
    config = small_dataset_config(teacher_states="none")
    config["splits"]["train"]["stride"] = 8
    meta = prepare_dataset(validate_dataset_config(config), output_dir=tmp_path)
    train, validation = open_split(tmp_path, "train"), open_split(tmp_path, "validation")
    assert (train.stride, validation.stride) == (8, 32)
    assert meta["stride"] == 32 and meta["splits"]["train"]["stride"] == 8
    assert "stride" not in meta["splits"]["validation"]
    plain = prepare_dataset(
        validate_dataset_config(small_dataset_config(teacher_states="none")),
        output_dir=tmp_path / "plain",
    )
    assert meta["splits"]["validation"]["examples"] == plain["splits"]["validation"]["examples"]
    assert meta["splits"]["train"]["examples"] > 3 * plain["splits"]["train"]["examples"]
    assert meta["fingerprint"] != plain["fingerprint"]
