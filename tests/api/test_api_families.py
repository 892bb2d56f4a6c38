"""Teacher families through the real API: a Gemma teacher's model serves /gist, and a
family that cannot read a gist at its block's positions (BLOOM) is a 422 naming it at
POST /datasets and POST /train, with nothing queued."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from gistnet.inference import GistEncoder
from tests.gistnet.test_families import CONFIGS, HEADS, LAYERS, WIDTH, save_teacher
from tests.service_stack import record_ready_dataset, record_trained_model


def _teacher_folder(api_stack, name: str):
    # Under the stack's data root: one of the folders a request may name a model in.
    folder = api_stack.settings.data_root / "teachers" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def gemma_model(api_stack) -> dict:
    """A model trained for a few steps on a dataset of a tiny random Gemma, recorded."""
    teacher = save_teacher(CONFIGS["gemma"](), _teacher_folder(api_stack, "gemma"))
    return record_trained_model(
        api_stack.settings,
        record_ready_dataset(api_stack.settings, teacher),
        model={"num_heads": HEADS},
    )


@pytest.fixture(scope="session")
def bloom_teacher(api_stack) -> str:
    config = transformers.BloomConfig(hidden_size=WIDTH, n_layer=LAYERS, n_head=HEADS)
    return save_teacher(config, _teacher_folder(api_stack, "bloom"))


def _jobs(client) -> int:
    return client.get("/jobs").json()["count"]


def test_gist_serves_the_model_of_a_gemma_teacher(client, api_stack, gemma_model):
    checkpoint = api_stack.settings.artifact_path(gemma_model["checkpoint"])
    encoder = GistEncoder.from_checkpoint(checkpoint)
    text = "the fox ran to the river and the owl watched it from the old oak tree " * 6
    blocks = np.asarray(encoder.tokenize(text)[: 2 * encoder.block_size]).reshape(2, -1)
    answer = client.post("/gist", json={"model_id": gemma_model["id"], "blocks": blocks.tolist()})
    assert answer.status_code == 200, answer.text
    gists = np.asarray(answer.json()["gists"], dtype=np.float32)
    assert gists.shape == (2, WIDTH)
    expected = encoder.encode(torch.as_tensor(blocks, dtype=torch.long)).numpy()
    np.testing.assert_allclose(gists, expected, atol=1e-5)


def test_post_datasets_with_a_family_that_cannot_read_gists_is_422_naming_it(
    client, bloom_teacher
):
    before = _jobs(client)
    body = {
        "dataset_name": "bloom",
        "tokenizer": bloom_teacher,
        "teacher_model": bloom_teacher,
        "splits": {"train": {"documents": ["a story about a fox " * 20]}},
    }
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "teacher_model: teacher family 'bloom'" in detail and "no position_ids" in detail
    assert "tested families: llama" in detail
    assert _jobs(client) == before


def test_post_train_on_a_dataset_whose_teacher_family_cannot_read_gists_is_422(
    client, api_stack, ready_dataset, bloom_teacher
):
    """A dataset that names a refused family (imported, or prepared elsewhere) trains
    nothing: the run is refused before it is queued."""
    from service.db.engine import session_scope
    from service.db.models import Dataset
    from service.queue import ProductStatus

    info = {**ready_dataset["info"], "teacher_model": bloom_teacher}
    with session_scope(api_stack.settings.database_url) as session:
        row = Dataset(name="bloom-ready", config={}, status=ProductStatus.READY, info=info)
        session.add(row)
        session.flush()
        dataset_id = row.id
    before = _jobs(client)
    answer = client.post("/train", json={"dataset_id": dataset_id, "training": {"max_steps": 5}})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith("the dataset's teacher_model: teacher family 'bloom'")
    assert "inputs_embeds and position_ids" in detail
    assert _jobs(client) == before
