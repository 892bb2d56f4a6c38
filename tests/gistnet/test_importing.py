"""gistnet.importing in this process: a dataset the seed's tool wrote becomes one of ours
(shards opened and copied, metadata.yaml in our form), a cancelled import writes no metadata, and
an import reads nothing outside its folder. The same through the service is
tests/workers/test_workers_import.py."""

from __future__ import annotations

import pytest
import yaml

from gistnet.datasets import read_metadata
from gistnet.errors import Cancelled, ShardError
from gistnet.importing import import_dataset, inspect_import, local_import_folder
from gistnet.shards import open_shard
from gistnet.storage import ArtifactStore
from tests.conftest import SAMPLE_TEACHER
from tests.seed_layout import write_seed_dataset


@pytest.fixture(scope="module")
def data_store(small_dataset, tmp_path_factory):
    """A data root holding small_dataset in the seed's layout under seed/small."""
    root = tmp_path_factory.mktemp("imports")
    write_seed_dataset(small_dataset, root / "seed" / "small", limit=30)
    return ArtifactStore(root, cache_dir=root / ".cache")


def _import(store, output, **options):
    source = inspect_import(store, "seed/small")
    with local_import_folder(store, source) as folder:
        return import_dataset(
            source,
            folder=folder,
            output_dir=output,
            dataset_name="seed-small",
            tokenizer=str(SAMPLE_TEACHER),
            teacher_model=str(SAMPLE_TEACHER),
            imported_from="seed/small",
            **options,
        )


def test_a_seed_dataset_imports_as_ours_its_shards_opened_and_copied(data_store, tmp_path):
    seen = []
    info = _import(data_store, tmp_path, on_progress=seen.append)
    assert (
        read_metadata(tmp_path) == info == yaml.safe_load((tmp_path / "metadata.yaml").read_text())
    )
    assert info["imported_from"] == {"path": "seed/small", "metadata_form": "seed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metadata.yaml",
        "train.arrow",
        "validation.arrow",
    ]
    assert (
        open_shard(tmp_path / "train.arrow").num_examples
        == info["splits"]["train"]["examples"]
        == 30
    )
    assert [s["stage"] for s in seen] == ["describing", "copied", "copied"]


def test_a_cancelled_import_writes_no_metadata(data_store, tmp_path):
    with pytest.raises(Cancelled, match="seed/small"):
        _import(data_store, tmp_path, should_cancel=lambda: True)
    assert not (tmp_path / "metadata.yaml").exists()


def test_the_import_itself_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "root" / "d").mkdir(parents=True)
    (tmp_path / "secret.arrow").write_bytes(b"x")
    (tmp_path / "root" / "d" / "train.arrow").symlink_to(tmp_path / "secret.arrow")
    store = ArtifactStore(tmp_path / "root", cache_dir=tmp_path / "cache")
    with pytest.raises(ShardError, match="symbolic link") as err:
        inspect_import(store, "d/train.arrow")
    assert "secret" not in str(err.value)
