"""gistnet.files.atomic_write: a reader finds the whole file or none; a failed write
leaves neither a file nor its temporary, and a full disk says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gistnet.errors import DiskFullError
from gistnet.files import atomic_write
from tests.small_disk import small_disk


class WriterFailed(Exception):
    pass


def test_a_finished_write_is_the_whole_file_under_its_name_and_no_temporary(tmp_path):
    target = tmp_path / "out" / "shard.arrow"
    payload = os.urandom(1 << 20)
    with atomic_write(target) as tmp:
        tmp.write_bytes(payload[: 1 << 19])
        assert not target.exists()  # a reader sees nothing before the rename
        with open(tmp, "ab") as handle:
            handle.write(payload[1 << 19 :])
    assert target.read_bytes() == payload
    assert os.listdir(target.parent) == ["shard.arrow"]


@pytest.mark.parametrize("shared", [False, True])
def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path, shared):
    target = tmp_path / "metadata.yaml"
    with pytest.raises(WriterFailed):
        with atomic_write(target, shared=shared) as tmp:
            tmp.write_text("half of it")
            raise WriterFailed
    assert os.listdir(tmp_path) == []


def test_a_failed_rewrite_keeps_the_earlier_file_whole(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text('{"rows": 3}')
    with pytest.raises(WriterFailed):
        with atomic_write(target) as tmp:
            tmp.write_text('{"ro')
            raise WriterFailed
    assert target.read_text() == '{"rows": 3}'
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_a_folder_is_written_whole_or_removed(tmp_path):
    target = tmp_path / "teacher"
    with atomic_write(target, shared=True) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["config.json"]
    with pytest.raises(WriterFailed):
        with atomic_write(tmp_path / "other", shared=True) as tmp:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"part")
            raise WriterFailed
    assert os.listdir(tmp_path) == ["teacher"]


def test_writers_of_one_path_at_once_each_have_their_own_temporary(tmp_path):
    target = tmp_path / "entry.json"
    with atomic_write(target, shared=True) as first, atomic_write(target, shared=True) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer block renamed last
    assert os.listdir(tmp_path) == ["entry.json"]


def test_a_full_disk_names_what_was_written_and_frees_its_space(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        with pytest.raises(DiskFullError, match="is full: the part manifest could not"):
            with atomic_write(Path(disk) / "part.json", what="the part manifest") as tmp:
                tmp.write_bytes(b"x" * (1 << 20))
        assert list(disk.iterdir()) == []


def test_a_folder_replaces_an_earlier_folder_whole_and_a_killed_writers_temporary(tmp_path):
    target = tmp_path / "gistnet"
    target.mkdir()
    (target / "model.safetensors").write_text("old weights")
    (target / "old-only.txt").write_text("gone with the old folder")
    stale = tmp_path / "gistnet.tmp"  # what a writer killed mid-folder leaves
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("new weights")
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (target / "model.safetensors").read_text() == "new weights"
    assert os.listdir(tmp_path) == ["gistnet"]  # no temporary, no old folder aside
