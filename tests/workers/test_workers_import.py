"""Datasets written by the seed's tool, registered through POST /datasets/import, train,
evaluate and serve through the service, on each kind of stack."""

from __future__ import annotations

import pytest

from tests.seed_layout import copy_without_metadata, write_seed_dataset, write_seed_shard
from tests.service_stack import train_body, wait_for_job


@pytest.fixture(scope="session")
def seed_under_data_root(stack, small_dataset):
    """small_dataset in the seed's layout (variable-length lists, the seed's metadata) and
    its train shard alone with no metadata, both under the stack's data root."""
    root = stack.settings.data_root
    write_seed_dataset(small_dataset, root / "seed" / "small", limit=60)
    copy_without_metadata(root / "seed" / "small", root / "seed" / "alone")
    return root / "seed"


def imported(client, body: dict) -> dict:
    accepted = client.post("/datasets/import", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    return client.get(accepted.json()["dataset_url"]).json()


def test_a_seed_dataset_imports_trains_evaluates_and_serves(
    stack_client, stack_worker, seed_under_data_root
):
    dataset = imported(stack_client, {"dataset_name": "seed-small", "path": "seed/small"})
    assert dataset["status"] == "ready"
    assert dataset["teacher_hidden_size"] == 128 and dataset["fingerprint"]
    assert set(dataset["splits"]) == {"train", "validation"}
    assert dataset["splits"]["train"]["examples"] == 60

    accepted = stack_client.post(
        "/train", json=train_body(dataset["id"], max_steps=4, objective="substitution")
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job
    model_id = job["result"]["model_id"]

    evaluation = stack_client.post(
        "/evaluations",
        json={"model_id": model_id, "dataset_id": dataset["id"], "bootstrap_samples": 20},
    )
    assert evaluation.status_code == 202, evaluation.text
    assert wait_for_job(stack_client, evaluation.json()["job_id"])["status"] == "succeeded"
    report = stack_client.get(evaluation.json()["evaluation_url"]).json()["report"]
    assert {"full", "gist", "drop", "mean"} <= set(report["conditions"])

    gists = stack_client.post("/gist", json={"model_id": model_id, "text": "Once upon " * 40})
    assert gists.status_code == 200, gists.text
    assert gists.json()["dim"] == 128


def test_a_shard_without_metadata_needs_its_tokenizer_and_teacher_named(
    stack_client, stack_worker, seed_under_data_root, teacher
):
    refused = stack_client.post(
        "/datasets/import", json={"dataset_name": "alone", "path": "seed/alone/train.arrow"}
    )
    assert refused.status_code == 422
    assert "tokenizer" in refused.json()["detail"]

    dataset = imported(
        stack_client,
        {
            "dataset_name": "alone",
            "path": "seed/alone/train.arrow",
            "tokenizer": teacher,
            "teacher_model": teacher,
        },
    )
    assert dataset["block_size"] == 32 and dataset["horizon"] == 64
    accepted = stack_client.post("/train", json=train_body(dataset["id"], max_steps=3))
    assert wait_for_job(stack_client, accepted.json()["job_id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "path, says",
    [
        ("../outside", "leaves the data root"),
        ("/etc", "relative to the server's data root"),
        ("seed/nothing-here", "no dataset folder"),
        ("seed/alone", "no metadata.yaml"),
    ],
)
def test_import_paths_are_checked_before_anything_is_queued(
    stack_client, seed_under_data_root, path, says
):
    refused = stack_client.post("/datasets/import", json={"dataset_name": "x", "path": path})
    assert refused.status_code == 422, refused.text
    assert says in refused.json()["detail"]


def test_a_row_of_the_wrong_length_fails_the_import_naming_row_and_column(
    stack, stack_client, stack_worker, teacher
):
    # Three rows; the second is one token short.
    rows = {
        "input_ids": [[1] * 32, [1] * 31, [1] * 32],
        "attention_mask": [[1] * 32] * 3,
        "context_input_ids": [[1] * 64] * 3,
        "context_attention_mask": [[1] * 64] * 3,
        "teacher_hidden": [[[0.0] * 8] * 32] * 3,
        "gist_target": [[0.0] * 8] * 3,
    }
    write_seed_shard(rows, stack.settings.data_root / "broken" / "train.arrow")
    accepted = stack_client.post(
        "/datasets/import",
        json={
            "dataset_name": "broken",
            "path": "broken/train.arrow",
            "tokenizer": teacher,
            "teacher_model": teacher,
        },
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "failed"
    assert "row 1 of column 'input_ids' has 31 values" in job["error"]["message"]


def test_a_token_only_dataset_of_several_shards_imports_and_trains(
    stack, stack_client, stack_worker, tmp_path_factory
):
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from tests.conftest import small_dataset_config

    config = small_dataset_config(teacher_states="none", stride=8)
    config["splits"]["train"]["shards"] = 2
    source = stack.settings.data_root / "ours" / "dense"
    prepare_dataset(validate_dataset_config(config), output_dir=source)
    written = sorted(p.name for p in source.glob("train-*.arrow"))
    assert len(written) == 2

    dataset = imported(stack_client, {"dataset_name": "dense", "path": "ours/dense"})
    assert dataset["status"] == "ready" and dataset["stride"] == 8
    train = dataset["splits"]["train"]
    assert train["examples"] == sum(s["examples"] for s in train["shards"]) > 0
    assert sorted(s["path"].rpartition("/")[2] for s in train["shards"]) == written

    accepted = stack_client.post(
        "/train", json=train_body(dataset["id"], max_steps=3, objective="substitution")
    )
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(stack_client, accepted.json()["job_id"])["status"] == "succeeded"


def _dataset_with_metadata(root, name: str, seed, change) -> str:
    """A copy of the seed dataset under the data root whose metadata.yaml `change` edits."""
    import shutil

    import yaml

    folder = root / "crafted" / name
    shutil.copytree(seed / "small", folder)
    metadata = yaml.safe_load((folder / "metadata.yaml").read_text())
    change(metadata, folder)
    (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    return f"crafted/{name}"


@pytest.mark.parametrize(
    "name, value",
    [
        ("absolute", "/other/dataset.arrow"),
        ("secret", "/etc/shadow"),
        ("artifacts", "../../artifacts/datasets/1/train.arrow"),
    ],
)
def test_an_import_whose_metadata_names_a_file_outside_its_folder_is_refused(
    stack, stack_client, seed_under_data_root, name, value
):
    def point_elsewhere(metadata, folder):
        metadata["splits"]["validation"]["path"] = value

    path = _dataset_with_metadata(stack.settings.data_root, name, seed_under_data_root, point_elsewhere)
    before = stack_client.get("/jobs").json()["count"]
    refused = stack_client.post("/datasets/import", json={"dataset_name": "x", "path": path})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "splits.validation.path" in detail and "own folder" in detail
    assert "Arrow" not in detail and "exist" not in detail  # nothing said of the file itself
    assert stack_client.get("/jobs").json()["count"] == before


def test_an_import_whose_shard_is_a_link_out_of_its_folder_is_refused_without_saying_where(
    stack, stack_client, seed_under_data_root, tmp_path
):
    outside = tmp_path / "elsewhere.arrow"
    outside.write_bytes(b"not yours")

    def link_out(metadata, folder):
        (folder / "validation.arrow").unlink()
        (folder / "validation.arrow").symlink_to(outside)

    path = _dataset_with_metadata(stack.settings.data_root, "linked", seed_under_data_root, link_out)
    refused = stack_client.post("/datasets/import", json={"dataset_name": "x", "path": path})
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "validation.arrow" in detail and "symbolic link" in detail
    assert str(tmp_path) not in detail and "elsewhere" not in detail


def test_an_imported_split_name_that_is_a_path_is_refused(
    stack, stack_client, seed_under_data_root
):
    def rename(metadata, folder):
        metadata["splits"]["../20/train"] = metadata["splits"].pop("validation")

    path = _dataset_with_metadata(stack.settings.data_root, "renamed", seed_under_data_root, rename)
    refused = stack_client.post("/datasets/import", json={"dataset_name": "x", "path": path})
    assert refused.status_code == 422, refused.text
    assert "split name '../20/train' is not allowed" in refused.json()["detail"]
