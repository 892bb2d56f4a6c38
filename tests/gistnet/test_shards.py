"""Reading shards (`gistnet.shards`: columns as views of the mapped file, a split of any
number of files as one ShardSet) and describing datasets (`gistnet.datasets`: metadata of
any form, fingerprints, the shard files of a split)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pytest

from gistnet.data import prepare_dataset
from gistnet.datasets import (
    describe_dataset,
    open_split,
    read_metadata,
    resolve_model_ref,
    shards_fingerprint,
    split_shard_paths,
)
from gistnet.errors import ShardError
from gistnet.files import file_sha256
from gistnet.shards import ChunkedRows, ShardSet, make_token_batch, open_shard, open_shard_set
from tests.conftest import SAMPLE_TEACHER, sharded_config
from tests.seed_layout import seed_rows, write_seed_shard

# --- reading one shard -------------------------------------------------------------------


def test_shard_opens_memory_mapped_without_copying(small_dataset):
    shard = open_shard(small_dataset / "train.arrow")
    n = shard.num_examples
    assert shard.teacher_hidden.shape == (n, 32, shard.hidden_size)
    assert shard.input_ids.shape == (n, 32) and shard.context_input_ids.shape == (n, 64)
    # views into the mapped file (one per record batch the preparation wrote), not copies
    parts = getattr(shard.teacher_hidden, "parts", [shard.teacher_hidden])
    assert len(parts) > 1  # the fixture's shard was written in several batches
    assert all(not p.flags.owndata and not p.flags.writeable for p in parts)
    gathered = shard.teacher_hidden[[0, n // 2, n - 1]]
    np.testing.assert_array_equal(gathered[2], parts[-1][-1])


def test_chunked_rows_index_like_the_concatenated_array():

    parts = [np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3) + 100 * n for n in (3, 1, 4)]
    rows, whole = ChunkedRows(parts), np.concatenate(parts)
    assert rows.shape == whole.shape == (8, 2, 3) and len(rows) == 8
    for key in (0, 3, -1, slice(2, 7), slice(None, None, -2), [7, 0, 3, 3], whole[:, 0, 0] > 300):
        np.testing.assert_array_equal(rows[key], whole[key])
    np.testing.assert_array_equal(np.asarray(rows), whole)
    with pytest.raises(IndexError):
        rows[[8]]


def test_unfinished_shard_is_refused_with_the_reason(tmp_path):
    (tmp_path / "train.arrow.tmp").write_bytes(b"partial")
    with pytest.raises(ShardError, match="did not complete"):
        open_shard(tmp_path / "train.arrow")


def test_reads_shards_with_variable_length_list_columns(tmp_path, small_dataset):
    shard = open_shard(small_dataset / "validation.arrow")
    n = 5
    table = pa.table(
        {
            "input_ids": pa.array(shard.input_ids[:n].tolist(), pa.list_(pa.int64())),
            "context_input_ids": pa.array(
                shard.context_input_ids[:n].tolist(), pa.list_(pa.int64())
            ),
            "teacher_hidden": pa.array(
                shard.teacher_hidden[:n].tolist(), pa.list_(pa.list_(pa.float32()))
            ),
            "gist_target": pa.array(shard.gist_target[:n].tolist(), pa.list_(pa.float32())),
        }
    )
    with pa.ipc.new_file(str(tmp_path / "other.arrow"), table.schema) as writer:
        writer.write_table(table)
    other = open_shard(tmp_path / "other.arrow")
    np.testing.assert_array_equal(other.input_ids, shard.input_ids[:n])
    np.testing.assert_allclose(other.teacher_hidden, shard.teacher_hidden[:n])


def test_a_one_file_split_is_a_shard_set_of_one(small_dataset):
    shard = open_shard(small_dataset / "validation.arrow")
    split = open_split(small_dataset, "validation")
    assert isinstance(shard, ShardSet) and shard.paths == split.paths == [shard.path]
    assert shard.rows_per_file == [shard.num_examples] == [split.num_examples]
    for column in ("input_ids", "context_input_ids", "teacher_hidden", "gist_target"):
        np.testing.assert_array_equal(
            np.asarray(getattr(shard, column)), np.asarray(getattr(split, column))
        )
    np.testing.assert_array_equal(shard.document_ids(), split.document_ids())
    assert (shard.block_size, shard.horizon, shard.stride) == (32, 64, 32)


def test_open_shard_asks_for_cached_states_and_a_shard_set_takes_tokens_only(tmp_path):
    ids = np.arange(4 * 64, dtype=np.int32).reshape(4, 64)
    batch = make_token_batch(input_ids=ids[:, :32], context_input_ids=ids)
    with pa.ipc.new_file(str(tmp_path / "train.arrow"), batch.schema) as writer:
        writer.write_batch(batch)
    with pytest.raises(ShardError, match="lacks column\\(s\\) teacher_hidden, gist_target"):
        open_shard(tmp_path / "train.arrow")
    tokens = open_shard_set([tmp_path / "train.arrow"])
    assert not tokens.has_teacher_states and tokens.hidden_size is None
    np.testing.assert_array_equal(tokens.context_input_ids[:], ids)



# --- a split of several shards -----------------------------------------------------------


def test_a_shard_set_gathers_rows_across_shards_from_views_of_the_files(cached_in_4):
    data = open_split(cached_in_4)
    for pieces in (data.input_ids.parts, data.teacher_hidden.parts):
        assert all(not p.flags.owndata and not p.flags.writeable for p in pieces)
    everything = data.teacher_hidden[:]
    rows = np.array([data.num_examples - 1, 0, 5, 5, int(data.rows_per_file[0])])
    np.testing.assert_array_equal(data.teacher_hidden[rows], everything[rows])
    np.testing.assert_array_equal(data.input_ids[-1], data.input_ids[:][-1])


def test_a_split_is_found_from_a_folder_a_glob_or_a_file(cached_in_4):
    shards = [cached_in_4 / f"train-{i:05d}-of-00004.arrow" for i in range(4)]
    assert split_shard_paths(cached_in_4) == shards
    assert split_shard_paths(cached_in_4 / "train-*.arrow") == shards
    assert split_shard_paths(shards[2]) == [shards[2]]
    assert split_shard_paths(cached_in_4, "validation") == [cached_in_4 / "validation.arrow"]
    with pytest.raises(ShardError, match="has no split 'test'; it has train, validation"):
        split_shard_paths(cached_in_4, "test")


def test_a_folder_whose_split_lost_a_shard_says_which(tmp_path):
    prepare_dataset(sharded_config(2, teacher_states="none"), output_dir=tmp_path)
    os.remove(tmp_path / "train-00001-of-00002.arrow")
    with pytest.raises(
        ShardError, match=r"has 1 of its 2 shards: train-00001-of-00002.arrow missing"
    ):
        open_split(tmp_path)


def test_shards_of_different_preparations_are_not_mixed(cached_in_4, tmp_path):
    prepare_dataset(sharded_config(1, teacher_states="none"), output_dir=tmp_path)
    with pytest.raises(ShardError, match="no teacher states"):
        open_shard_set([cached_in_4 / "train-00000-of-00004.arrow", tmp_path / "train.arrow"])


# --- describing a dataset ----------------------------------------------------------------


def test_seed_metadata_is_read_into_our_form(seed_dataset, small_dataset):
    ours = read_metadata(small_dataset)
    info = describe_dataset(seed_dataset)
    assert info["metadata_form"] == "seed"
    assert info["teacher_hidden_size"] == ours["teacher_hidden_size"]
    assert (info["block_size"], info["horizon"]) == (32, 64)
    assert info["tokenizer"] == ours["tokenizer"] and info["teacher_model"] == ours["teacher_model"]
    assert info["teacher_dtype"] == "float32"  # the seed's "auto"
    assert info["splits"]["train"]["path"] == "train.arrow"
    assert info["splits"]["validation"]["examples"] == ours["splits"]["validation"]["examples"]
    assert len(info["fingerprint"]) == 16
    # the same dataset whether named by its folder or by one of its shards
    assert describe_dataset(seed_dataset / "train.arrow")["fingerprint"] == info["fingerprint"]


def test_fingerprint_of_a_dataset_without_one_follows_the_shards_bytes(seed_dataset, tmp_path):
    rows = seed_rows(seed_dataset / "validation.arrow", limit=6)
    first = describe_dataset(write_seed_shard(rows, tmp_path / "a" / "train.arrow"))
    rows["teacher_hidden"][0][0][0] += 1.0
    second = describe_dataset(write_seed_shard(rows, tmp_path / "b" / "train.arrow"))
    assert first["fingerprint"] != second["fingerprint"]


def test_a_shard_without_metadata_is_described_by_its_columns(seed_shard_alone):
    info = describe_dataset(seed_shard_alone)
    assert info["metadata_form"] == "none"
    assert (info["block_size"], info["horizon"], info["teacher_hidden_size"]) == (32, 64, 128)
    assert info["tokenizer"] is None and info["teacher_model"] is None
    assert info["splits"] == {
        "train": {"path": "train.arrow", "examples": open_shard(seed_shard_alone).num_examples}
    }
    given = describe_dataset(
        seed_shard_alone, tokenizer=str(SAMPLE_TEACHER), teacher_model=str(SAMPLE_TEACHER)
    )
    assert given["teacher_model"] == str(SAMPLE_TEACHER.resolve())
    assert given["fingerprint"] == info["fingerprint"]


def test_a_folder_without_metadata_says_to_name_the_shard(seed_shard_alone):
    with pytest.raises(ShardError, match="give the shard file itself"):
        describe_dataset(seed_shard_alone.parent)


def test_file_sha256_is_the_sha256_of_the_bytes_and_a_fingerprint_follows_a_rewrite(tmp_path):
    path = tmp_path / "x.arrow"
    path.write_bytes(b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    before = shards_fingerprint([path])
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert file_sha256(path) == hashlib.sha256(b"two").hexdigest()
    assert shards_fingerprint([path]) != before


def test_a_local_model_folder_becomes_absolute_and_a_hub_id_stays(tmp_path, monkeypatch):
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    absolute = str((tmp_path / "models" / "teacher").resolve())
    assert resolve_model_ref("models/teacher", tmp_path) == absolute
    monkeypatch.chdir(tmp_path / "models")
    assert resolve_model_ref("teacher") == absolute
    assert resolve_model_ref("some-org/some-model", tmp_path) == "some-org/some-model"
