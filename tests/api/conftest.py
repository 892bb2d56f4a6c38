"""The app on each kind of stack (embedded SQLite, and PostgreSQL + Redis), with no worker:
these tests are about what the API answers before anything runs. A prepared dataset and a
trained model are made in-process with the library and recorded as the workers would."""

from __future__ import annotations

import pytest

from service.db.engine import session_scope
from service.db.models import Dataset, Job
from service.db.records import record_model
from service.queue import JobKind, JobStatus, ProductStatus, QueueName
from tests.service_stack import (
    REDIS_DB,
    STACK_KINDS,
    sample_teacher,
    stack_of_kind,
    tiny_documents,
)


@pytest.fixture(scope="session")
def teacher() -> str:
    return sample_teacher()


@pytest.fixture(scope="session", params=STACK_KINDS)
def api_stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    with stack_of_kind(request.param, root, redis_db=REDIS_DB["api"]) as stack:
        yield stack


@pytest.fixture(scope="session")
def client(api_stack):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(api_stack.settings)) as client:
        yield client


@pytest.fixture(scope="session")
def ready_dataset(api_stack, teacher) -> dict:
    """A dataset prepared with the library and recorded `ready`: {id, info}."""
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    documents = tiny_documents(6)
    config = {
        "dataset_name": "ready",
        "tokenizer": teacher,
        "teacher_model": teacher,
        "teacher_device": "cpu",
        "splits": {
            "train": {"documents": documents[:4]},
            "validation": {"documents": documents[4:]},
        },
    }
    settings = api_stack.settings
    with session_scope(settings.database_url) as session:
        dataset = Dataset(name="ready", config=config, status=ProductStatus.READY)
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
        session.add(
            Job(
                kind=JobKind.PREPARE,
                queue=QueueName.PREP,
                status=JobStatus.SUCCEEDED,
                dataset_id=dataset_id,
            )
        )
    out = settings.artifact_path(f"datasets/{dataset_id}")
    info = prepare_dataset(validate_dataset_config(config), output_dir=out)
    info["splits"] = {k: {**v, "path": f"{k}.arrow"} for k, v in info["splits"].items()}
    with session_scope(settings.database_url) as session:
        row = session.get(Dataset, dataset_id)
        row.info, row.path = info, f"datasets/{dataset_id}"
    return {"id": dataset_id, "info": info}


def _train_and_record(api_stack, ready_dataset, model_section: dict) -> dict:
    """A model trained for a few steps with the library and recorded: {id, checkpoint}."""
    from gistnet.checkpoint import read_checkpoint_info
    from gistnet.config import validate_run_config
    from gistnet.train import train_gistnet

    settings = api_stack.settings
    with session_scope(settings.database_url) as session:
        job = Job(
            kind=JobKind.TRAIN,
            queue=QueueName.TRAIN,
            status=JobStatus.SUCCEEDED,
            dataset_id=ready_dataset["id"],
        )
        session.add(job)
        session.flush()
        job_id = job.id
    output = settings.artifact_path(f"jobs/{job_id}")
    result = train_gistnet(
        dataset_path=output.parent.parent / f"datasets/{ready_dataset['id']}/train.arrow",
        run_config=validate_run_config(
            {
                "model": model_section,
                "training": {"max_steps": 3, "batch_size": 4, "device": "cpu"},
            }
        ),
        output_dir=output,
    )
    with session_scope(settings.database_url) as session:
        model = record_model(
            session,
            job_id=job_id,
            dataset_id=ready_dataset["id"],
            split="train",
            checkpoint_path=f"jobs/{job_id}/gistnet.pt",
            info=read_checkpoint_info(result.checkpoint_path),
            steps=result.steps,
            final_loss=result.final_loss,
            val_loss=result.val_loss,
        )
        return {"id": model.id, "checkpoint": result.checkpoint_path, "job_id": job_id}


@pytest.fixture(scope="session")
def trained_model(api_stack, ready_dataset) -> dict:
    """A model trained for a few steps with the library and recorded: {id, checkpoint}."""
    return _train_and_record(api_stack, ready_dataset, {})


@pytest.fixture(scope="session")
def two_gist_model(api_stack, ready_dataset) -> dict:
    """As trained_model, with gists_per_block 2: two vectors per block."""
    return _train_and_record(api_stack, ready_dataset, {"gists_per_block": 2})
