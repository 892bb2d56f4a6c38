"""A prepared dataset read by Hugging Face `datasets` (the version the dev extra pins):
every split by name, every column with its type, every row as our own reader gives it."""

import datasets
import numpy as np
import pyarrow as pa
import pytest

from gistnet.datasets import hf_data_files, open_split

COLUMNS = (
    "input_ids",
    "attention_mask",
    "context_input_ids",
    "context_attention_mask",
    "teacher_hidden",
    "gist_target",
)


def _load(folder, cache):
    return datasets.load_dataset("arrow", data_files=hf_data_files(folder), cache_dir=str(cache))


@pytest.mark.parametrize("fixture", ["small_dataset", "cached_in_4"])
def test_every_split_loads_by_name_with_every_column_and_row(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    loaded = _load(folder, tmp_path)
    assert set(loaded) == {"train", "validation"}
    for split, table in loaded.items():
        ours = open_split(folder, split)
        assert table.num_rows == ours.num_examples
        written = pa.ipc.open_file(str(ours.path)).schema
        assert table.data.table.schema.remove_metadata().equals(written.remove_metadata())
        rows = table.with_format("numpy")[:]  # every row, as one array per column
        for column in ("input_ids", "context_input_ids", "teacher_hidden", "gist_target"):
            np.testing.assert_array_equal(rows[column], np.asarray(getattr(ours, column)))
        assert rows["attention_mask"].shape == rows["input_ids"].shape
        assert rows["attention_mask"].all() and rows["context_attention_mask"].all()


def test_a_row_reads_as_nested_lists_in_the_shapes_the_shard_has(small_dataset, tmp_path):
    row = _load(small_dataset, tmp_path)["validation"][0]
    assert set(row) == set(COLUMNS)
    hidden = np.asarray(row["teacher_hidden"], dtype=np.float32)
    ours = open_split(small_dataset, "validation")
    assert hidden.shape == (ours.block_size, ours.hidden_size)
    np.testing.assert_array_equal(hidden, ours.teacher_hidden[0])
    assert row["input_ids"] == ours.input_ids[0].tolist()
    np.testing.assert_allclose(hidden.mean(axis=0), row["gist_target"], rtol=1e-5, atol=1e-6)


def test_the_files_of_a_split_of_several_shards_are_all_named(cached_in_4):
    files = hf_data_files(cached_in_4)
    assert len(files["train"]) == 4 and len(files["validation"]) == 1
    assert files["train"] == sorted(files["train"])


@pytest.mark.parametrize("fixture", ["small_dataset", "cached_in_4"])
def test_the_folder_alone_loads_its_splits_by_their_file_names(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path))
    named = _load(folder, tmp_path / "named")
    assert {split: t.num_rows for split, t in loaded.items()} == {
        split: t.num_rows for split, t in named.items()
    }
    for split in named:
        assert loaded[split].data.table.equals(named[split].data.table)
