"""The app on each kind of stack (embedded SQLite, and PostgreSQL + Redis), with no worker:
these tests are about what the API answers before anything runs. A prepared dataset and a
trained model are made in-process with the library and recorded as the workers would."""

from __future__ import annotations

import pytest

from tests.service_stack import (
    REDIS_DB,
    STACK_KINDS,
    record_ready_dataset,
    record_trained_model,
    sample_teacher,
    stack_of_kind,
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
    return record_ready_dataset(api_stack.settings, teacher)


@pytest.fixture(scope="session")
def trained_model(api_stack, ready_dataset) -> dict:
    """A model trained for a few steps with the library and recorded: {id, checkpoint}."""
    return record_trained_model(api_stack.settings, ready_dataset)


@pytest.fixture(scope="session")
def two_gist_model(api_stack, ready_dataset) -> dict:
    """As trained_model, with gists_per_block 2: two vectors per block."""
    return record_trained_model(api_stack.settings, ready_dataset, model={"gists_per_block": 2})


@pytest.fixture(scope="session")
def sink_model(api_stack, ready_dataset) -> dict:
    """As trained_model, with bos_sink: its gists are read after the teacher's BOS."""
    return record_trained_model(api_stack.settings, ready_dataset, model={"bos_sink": True})


@pytest.fixture(scope="session")
def layers_model(api_stack, ready_dataset) -> dict:
    """As trained_model, reading the teacher's hidden states 0 and 2 beside the last."""
    return record_trained_model(api_stack.settings, ready_dataset, model={"teacher_layers": [0, 2]})
