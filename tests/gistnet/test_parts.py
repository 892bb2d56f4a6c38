"""Splits written as many shards, part by part, and read back as one: the rows do not depend
on the number of parts, a verified part is not written again, a damaged one is named, and
training and evaluation take a dataset folder, a glob of shards or a single shard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gistnet.config import validate_run_config
from gistnet.data import (
    finalize_dataset,
    plan_dataset,
    plan_parts,
    prepare_dataset,
    prepare_part,
)
from gistnet.datasets import open_split, read_metadata
from gistnet.errors import ShardError
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings
from tests.conftest import sharded_config


def test_a_split_in_4_parts_holds_the_rows_of_1_part_and_the_same_fingerprint(
    cached_in_4, small_dataset
):
    one, four = read_metadata(small_dataset), read_metadata(cached_in_4)
    assert four["fingerprint"] == one["fingerprint"]
    assert four["splits"]["train"]["path"] == "train-*-of-00004.arrow"
    assert [s["path"] for s in four["splits"]["train"]["shards"]] == [
        f"train-{i:05d}-of-00004.arrow" for i in range(4)
    ]
    for key in ("documents", "tokens", "blocks", "examples"):
        assert four["splits"]["train"][key] == one["splits"]["train"][key]
    a, b = open_split(small_dataset), open_split(cached_in_4)
    assert len(b.paths) == 4 and sum(b.rows_per_file) == a.num_examples
    np.testing.assert_array_equal(b.input_ids[:], a.input_ids[:])
    np.testing.assert_array_equal(b.context_input_ids[:], a.context_input_ids[:])
    np.testing.assert_allclose(b.teacher_hidden[:], a.teacher_hidden[:], atol=1e-5, rtol=0)
    np.testing.assert_allclose(b.gist_target[:], a.gist_target[:], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(b.document_ids(), a.document_ids())


def test_parts_are_contiguous_document_ranges_and_the_rows_never_depend_on_their_number(
    tmp_path,
):
    rows = {}
    for shards in (1, 3, 7):
        config = sharded_config(shards, teacher_states="none")
        parts = plan_dataset(config)["splits"]["train"]["parts"]
        assert parts[0]["start"] == 0 and parts[-1]["stop"] == 40
        assert all(a["stop"] == b["start"] for a, b in zip(parts, parts[1:], strict=False))
        prepare_dataset(config, output_dir=tmp_path / str(shards))
        rows[shards] = open_split(tmp_path / str(shards)).context_input_ids[:]
    np.testing.assert_array_equal(rows[3], rows[1])
    np.testing.assert_array_equal(rows[7], rows[1])


def test_a_part_written_and_verified_is_not_written_again_and_a_damaged_one_is(tmp_path):
    config = sharded_config(2, teacher_states="none")
    plan = plan_dataset(config)
    first = prepare_part(config, plan=plan, split="train", index=1, output_dir=tmp_path)
    shard = tmp_path / first["path"]
    written = shard.stat().st_mtime_ns
    again = prepare_part(config, plan=plan, split="train", index=1, output_dir=tmp_path)
    assert again["reused"] and again["sha256"] == first["sha256"]
    assert shard.stat().st_mtime_ns == written

    _flip_a_byte(shard)
    redone = prepare_part(config, plan=plan, split="train", index=1, output_dir=tmp_path)
    assert not redone.get("reused") and redone["sha256"] == first["sha256"]


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_finalize_fails_naming_a_damaged_or_unfinished_part(tmp_path):
    config = sharded_config(3, teacher_states="none")
    plan = plan_dataset(config)
    for part in plan_parts(plan)[:-1]:  # every part but validation's
        prepare_part(
            config, plan=plan, split=part["split"], index=part["index"], output_dir=tmp_path
        )
    with pytest.raises(
        ShardError, match=r"split 'validation' part 1 of 1 \(validation.arrow\) has no manifest"
    ):
        finalize_dataset(config, plan=plan, output_dir=tmp_path)
    prepare_part(config, plan=plan, split="validation", index=0, output_dir=tmp_path)
    finalize_dataset(config, plan=plan, output_dir=tmp_path)
    metadata = (tmp_path / "metadata.yaml").read_text()
    finalize_dataset(config, plan=plan, output_dir=tmp_path)  # idempotent
    assert (tmp_path / "metadata.yaml").read_text().split("created_at")[0] == metadata.split(
        "created_at"
    )[0]

    _flip_a_byte(tmp_path / "train-00001-of-00003.arrow")
    with pytest.raises(
        ShardError, match=r"part 2 of 3 \(train-00001-of-00003.arrow\) does not match the checksum"
    ):
        finalize_dataset(config, plan=plan, output_dir=tmp_path)


@pytest.mark.parametrize("form", ["folder", "glob", "file"])
def test_training_takes_a_folder_a_glob_or_one_shard(form, cached_in_4, tmp_path):
    dataset = {
        "folder": cached_in_4,
        "glob": cached_in_4 / "train-*-of-00004.arrow",
        "file": cached_in_4 / "train-00001-of-00004.arrow",
    }[form]
    run = validate_run_config(
        {"training": {"batch_size": 8, "max_steps": 3, "device": "cpu", "eval_every": 3}}
    )
    result = train_gistnet(
        TrainRequest(dataset=dataset, output_dir=tmp_path, settings=TrainSettings(run=run))
    )
    assert len(result.history) == 3 and result.val_loss is not None
    manifest = json.loads((cached_in_4 / ".parts" / "train-00001-of-00004.arrow.json").read_text())
    assert (
        manifest["examples"] == open_split(cached_in_4 / "train-00001-of-00004.arrow").num_examples
    )
