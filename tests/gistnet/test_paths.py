"""gistnet.paths: every path built from a name stays under its root, whatever the caller
checked; the split-name rule is the same for a YAML config as for the service."""

from __future__ import annotations

import pytest

from gistnet.config import SplitConfig
from gistnet.data import shard_paths
from gistnet.paths import PathOutsideRoot, path_under
from gistnet.storage import ArtifactStore

ESCAPES = ["../../x/owned", "/tmp/x/owned", "../20/train", "a/../../b", "~/x", "a\\..\\b"]


@pytest.mark.parametrize("name", ESCAPES)
def test_a_name_that_leaves_the_root_is_refused_by_the_builder(tmp_path, name):
    with pytest.raises(PathOutsideRoot):
        path_under(tmp_path / "out", name)


def test_a_link_inside_the_root_that_leads_out_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "away").symlink_to(tmp_path)
    with pytest.raises(PathOutsideRoot) as err:
        path_under(tmp_path / "root", "away/file")
    assert str(tmp_path) not in str(err.value)  # where the link leads is not said
    assert path_under(tmp_path / "root", "a/b.arrow") == (tmp_path / "root" / "a/b.arrow")


@pytest.mark.parametrize("name", ["../../x/owned", "/tmp/x/owned", "../20/train"])
def test_shard_paths_refuse_a_split_name_that_leaves_the_output_folder(tmp_path, name):
    # Built as the library would be called without any validation in front of it.
    split = SplitConfig.model_construct(shards=1, output_path=None)
    with pytest.raises(PathOutsideRoot):
        shard_paths(name, split, tmp_path, tmp_path / "out")
    split = SplitConfig.model_construct(shards=3, output_path=None)
    with pytest.raises(PathOutsideRoot):
        shard_paths(name, split, tmp_path, tmp_path / "out")


def test_local_store_keys_stay_under_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "away").symlink_to(tmp_path)
    (tmp_path / "secret").write_text("x")
    store = ArtifactStore(tmp_path / "root", cache_dir=tmp_path / "cache")
    for key in ("../secret", "away/secret", "a/../../secret"):
        with pytest.raises(PathOutsideRoot):
            store.read_text(key)
        with pytest.raises(PathOutsideRoot):
            store.publish(tmp_path / "secret", key)
    with store.writing("datasets/1") as folder:
        assert folder == tmp_path / "root" / "datasets" / "1"


def test_object_store_keys_stay_under_the_prefix(s3, tmp_path):
    store = ArtifactStore(
        f"s3://{s3.new_bucket()}/platform",
        storage_options=s3.storage_options,
        cache_dir=tmp_path / "cache",
    )
    (tmp_path / "f").write_text("x")
    for key in ("../other/f", "a/../../f", "a\\..\\f"):
        with pytest.raises(PathOutsideRoot):
            store.publish(tmp_path / "f", key)
        with pytest.raises(PathOutsideRoot):
            store.exists(key)
    assert store.publish(tmp_path / "f", "datasets/1/f").endswith("/platform/datasets/1/f")
