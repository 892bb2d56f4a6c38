"""gistnet.datasets: what a dataset is whatever wrote it (ours, the seed's form, a shard
alone), a split's shard files from a folder, a glob or a file, and a fingerprint that
follows the shards' bytes. The seed's layout trained and served is test_seed_layout.py."""

from __future__ import annotations

import shutil

import pytest

from gistnet.datasets import (
    describe_dataset,
    read_metadata,
    shards_fingerprint,
    split_path,
    split_shard_paths,
)
from gistnet.errors import ShardError
from tests.seed_layout import copy_without_metadata, write_seed_dataset


def test_our_metadata_is_described_as_written(small_dataset):
    info = describe_dataset(small_dataset)
    assert info == {**read_metadata(small_dataset), "metadata_form": "gistnet"}
    assert split_path(info, small_dataset, "train") == small_dataset / "train.arrow"
    with pytest.raises(ShardError, match="no split 'test'; it has train, validation"):
        split_path(info, small_dataset, "test")


def test_the_seeds_form_and_a_shard_alone_describe_alike(small_dataset, tmp_path):
    seed = write_seed_dataset(small_dataset, tmp_path / "seed", limit=20)
    described = describe_dataset(seed)
    assert described["metadata_form"] == "seed"
    assert (described["block_size"], described["horizon"]) == (32, 64)
    assert described["teacher_hidden_size"] == 128 and len(described["fingerprint"]) == 16
    assert described["splits"]["train"]["path"] == "train.arrow"

    alone = copy_without_metadata(seed, tmp_path / "alone")
    bare = describe_dataset(alone)
    assert bare["metadata_form"] == "none" and bare["tokenizer"] is None
    assert (bare["block_size"], bare["horizon"], bare["teacher_hidden_size"]) == (32, 64, 128)
    # The same bytes, the same fingerprint, whichever way the dataset is described.
    assert bare["fingerprint"] == shards_fingerprint([seed / "train.arrow"])
    with pytest.raises(ShardError, match="has no metadata.yaml: give the shard file itself"):
        describe_dataset(alone.parent)


def test_the_fingerprint_follows_the_shards_bytes(small_dataset, tmp_path):
    copy = tmp_path / "train.arrow"
    shutil.copyfile(small_dataset / "train.arrow", copy)
    before = shards_fingerprint([copy])
    assert before == shards_fingerprint([small_dataset / "train.arrow"])
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert shards_fingerprint([copy]) != before


def test_a_split_is_found_from_a_folder_a_glob_or_a_file(small_dataset, tmp_path):
    shard = small_dataset / "validation.arrow"
    assert split_shard_paths(small_dataset, "validation") == [shard]
    assert split_shard_paths(str(small_dataset / "valid*.arrow")) == [shard]
    assert split_shard_paths(shard) == [shard]
    with pytest.raises(ShardError, match="matches no shard file"):
        split_shard_paths(str(tmp_path / "*.arrow"))
    with pytest.raises(ShardError, match="no split 'test'"):
        split_shard_paths(small_dataset, "test")
