"""Small inputs that ask for unbounded work are refused naming the bound: a checkpoint whose
model is too large to build, a source line or an upload that expands too far."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.services]


def _record_forged_model(settings, trained_model: dict, dataset_id: int, **model_config) -> int:
    """A copy of the trained model's checkpoint whose model_config says otherwise, written
    into the artifact store and recorded as a model, as a hostile writer would."""
    from service.db.engine import session_scope
    from service.db.models import Job
    from service.db.records import record_model
    from service.queue import JobKind, JobStatus, QueueName

    payload = torch.load(trained_model["checkpoint"], map_location="cpu", weights_only=True)
    payload["model_config"] = {**payload["model_config"], **model_config}
    with session_scope(settings.database_url) as session:
        job = Job(kind=JobKind.TRAIN, queue=QueueName.TRAIN, status=JobStatus.SUCCEEDED)
        session.add(job)
        session.flush()
        job_id = job.id
    key = f"jobs/{job_id}/gistnet.pt"
    settings.artifact_path(key).parent.mkdir(parents=True)
    torch.save(payload, settings.artifact_path(key))
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    config = payload["model_config"]
    info |= {"block_size": config["block_size"], "hidden_size": config["hidden_size"]}
    with session_scope(settings.database_url) as session:
        model = record_model(
            session,
            job_id=job_id,
            dataset_id=dataset_id,
            split="train",
            checkpoint_path=key,
            info=info,
            steps=3,
            final_loss=None,
            val_loss=None,
        )
        return model.id


@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ({"num_layers": 100_000}, "model_config.num_layers is 100000"),
        ({"hidden_size": 1_000_000}, "GISTNET_WORKER_MEMORY_BYTES"),
    ],
)
def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_it_is_built(
    client, api_stack, ready_dataset, trained_model, shape, named
):
    model_id = _record_forged_model(api_stack.settings, trained_model, ready_dataset["id"], **shape)
    block = [1] * trained_model_block_size(trained_model)
    answer = client.post("/gist", json={"model_id": model_id, "blocks": [block]})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert named in detail and f"model {model_id} cannot be served" in detail
    # The model that fits is served as before.
    fine = client.post("/gist", json={"model_id": trained_model["id"], "blocks": [block]})
    assert fine.status_code == 200, fine.text


def trained_model_block_size(trained_model: dict) -> int:
    from gistnet.checkpoint import read_checkpoint_info

    return int(read_checkpoint_info(trained_model["checkpoint"])["block_size"])
