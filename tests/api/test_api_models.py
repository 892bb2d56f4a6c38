"""A model as a folder to download (GET /models/{id}/download, Client.download_model), and
deletion (DELETE /models/{id}, DELETE /datasets/{id}): rows and files go together, never
while a job still works on them, and a deleted model is no longer served."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from api.main import create_app
from gistnet.client import APIError, Client
from gistnet.inference import GistEncoder
from service.artifacts import dataset_dir
from tests.service_stack import (
    dataset_body,
    record_ready_dataset,
    record_trained_model,
    served,
)
from workers.recovery import remove_failed_datasets_files


def test_a_model_downloads_as_a_folder_that_loads_and_gives_its_gists(
    client, api_stack, trained_model, tmp_path
):
    answer = client.get(f"/models/{trained_model['id']}/download")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
        name = f"gistnet-{trained_model['id']}"
        assert sorted(tar.getnames()) == sorted(
            [
                name,
                *(
                    f"{name}/{f}"
                    for f in ("README.md", "config.json", "model.safetensors", "run.yaml")
                ),
            ]
        )
    with (
        served(create_app(api_stack.settings)) as (host, port),
        Client(f"http://{host}:{port}") as gn,
    ):
        folder = gn.download_model(trained_model["id"], tmp_path)
        with pytest.raises(APIError) as missing:
            gn.download_model(999_999, tmp_path)
    assert missing.value.status_code == 404
    blocks = torch.tensor([[5] * 32])
    assert torch.equal(
        GistEncoder.from_checkpoint(folder).encode(blocks),
        GistEncoder.from_checkpoint(trained_model["checkpoint"]).encode(blocks),
    )
    assert "No evaluation yet" in (folder / "README.md").read_text()


def _cancel(client, job_id: int) -> None:
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_a_model_goes_with_its_evaluations_and_checkpoint_once_none_runs(
    client, api_stack, teacher
):
    dataset = record_ready_dataset(api_stack.settings, teacher)
    model = record_trained_model(api_stack.settings, dataset)
    checkpoint = Path(model["checkpoint"])
    assert client.post("/gist", json={"model_id": model["id"], "blocks": [[5] * 32]}).is_success
    memory = client.post("/memories", json={"model_id": model["id"], "tokens": [5] * 40}).json()
    memory_file = api_stack.settings.artifact_root / memory["path"]
    assert memory_file.exists()
    queued = client.post(
        "/evaluations", json={"model_id": model["id"], "dataset_id": dataset["id"]}
    ).json()

    busy = client.delete(f"/models/{model['id']}")
    assert busy.status_code == 409
    assert f"being evaluated by job {queued['job_id']}" in busy.json()["detail"]
    assert checkpoint.exists()
    folder = checkpoint.parent / "gistnet"  # the training run's model folder
    assert (folder / "model.safetensors").is_file()

    _cancel(client, queued["job_id"])
    assert client.delete(f"/models/{model['id']}").status_code == 204
    assert not checkpoint.exists() and not folder.exists()
    assert not checkpoint.parent.exists()
    assert client.get(f"/models/{model['id']}").status_code == 404
    assert client.get(f"/evaluations/{queued['evaluation_id']}").status_code == 404
    assert client.get(f"/jobs/{model['job_id']}").status_code == 404
    # Its memories hold gists no other model reads: they go with it.
    assert client.get(f"/memories/{memory['id']}").status_code == 404
    assert not memory_file.parent.exists()
    # Loaded before the deletion: no longer served from memory.
    gone = client.post("/gist", json={"model_id": model["id"], "blocks": [[5] * 32]})
    assert gone.status_code == 404
    assert client.delete(f"/models/{model['id']}").status_code == 404


def test_a_dataset_waits_for_its_jobs_and_models_then_goes_with_its_files(
    client, api_stack, teacher
):
    dataset = record_ready_dataset(api_stack.settings, teacher)
    model = record_trained_model(api_stack.settings, dataset)
    folder = api_stack.settings.artifact_path(dataset_dir(dataset["id"]))
    assert folder.exists()

    refused = client.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409
    assert f"models trained on it ({model['id']})" in refused.json()["detail"]
    assert client.delete(f"/models/{model['id']}").status_code == 204
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404

    # An uploaded dataset, queued (no worker runs here): its uploaded files go with it.
    config = dataset_body(teacher, ["x"] * 3)
    config["splits"] = {"train": {}}
    queued = client.post(
        "/datasets",
        data={"config": json.dumps(config)},
        files=[("train", ("a.txt", b"Once upon a time. " * 40, "text/plain"))],
    ).json()
    source = client.get(f"/datasets/{queued['dataset_id']}").json()["sources"]["train"]
    upload = api_stack.settings.data_root / Path(source).parents[1]
    assert upload.is_dir() and upload.parent.name == "uploads"
    busy = client.delete(f"/datasets/{queued['dataset_id']}")
    assert busy.status_code == 409 and f"job {queued['job_id']}" in busy.json()["detail"]
    _cancel(client, queued["job_id"])
    assert client.delete(f"/datasets/{queued['dataset_id']}").status_code == 204
    assert client.get(f"/jobs/{queued['job_id']}").status_code == 404
    assert not upload.exists()


def test_the_sweep_removes_the_files_of_a_deleted_dataset_left_behind(api_stack):
    orphan = api_stack.settings.artifact_path(dataset_dir(2_000_000))
    orphan.mkdir(parents=True)
    (orphan / "train.arrow").write_bytes(b"left when the removal was cut short")
    assert 2_000_000 in remove_failed_datasets_files(api_stack.settings)
    assert not orphan.exists()
