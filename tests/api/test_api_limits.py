"""Absurd requests are refused before anything runs: numbers beyond their bound (which the
operator can raise), a run that would not fit a worker's memory (with the estimate), and a
text longer than the block limit (before it is tokenized)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from service.settings import load_settings

pytestmark = [pytest.mark.services]


def _job_count(client) -> int:
    return client.get("/jobs").json()["count"]


def _app_with(api_stack, **overrides):
    settings = load_settings(**{**api_stack.settings.model_dump(exclude={"api_key"}), **overrides})
    return create_app(settings)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("training", "max_steps", 10**12),
        ("training", "batch_size", 10**9),
        ("model", "num_layers", 10**9),
        ("training", "seed", 2**70),
        ("training", "lr", 1e300),
    ],
)
def test_a_number_beyond_its_bound_is_422_naming_field_bound_and_setting(
    client, ready_dataset, section, field, value
):
    before = _job_count(client)
    body = {"dataset_id": ready_dataset["id"], section: {field: value}}
    answer = client.post("/train", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith(f"{section}.{field} is ")
    assert "at most" in detail and f'GISTNET_LIMITS=\'{{"{section}.{field}"' in detail
    assert _job_count(client) == before


def test_dataset_and_evaluation_numbers_have_bounds_too(client, teacher, ready_dataset):
    body = {
        "dataset_name": "big",
        "tokenizer": teacher,
        "teacher_model": teacher,
        "teacher_batch_size": 10**9,
        "splits": {"train": {"documents": ["a story " * 40]}},
    }
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("teacher_batch_size")
    body["teacher_batch_size"] = 8
    body["splits"]["train"]["max_tokens"] = 10**15
    answer = client.post("/datasets", json=body)
    assert answer.json()["detail"].startswith("splits.train.max_tokens is 1000000000000000")
    evaluation = {"model_id": 1, "dataset_id": ready_dataset["id"], "bootstrap_samples": 10**8}
    answer = client.post("/evaluations", json=evaluation)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("bootstrap_samples")


def test_the_operator_raises_a_bound_with_gistnet_limits(api_stack, ready_dataset):
    body = {"dataset_id": ready_dataset["id"], "training": {"max_steps": 2_000_000}}
    with TestClient(_app_with(api_stack)) as client:
        assert client.post("/train", json=body).status_code == 422
    raised = _app_with(api_stack, limits={"training.max_steps": 5_000_000})
    with TestClient(raised) as client:
        accepted = client.post("/train", json=body)
        assert accepted.status_code == 202, accepted.text
        # Nothing runs here; a queued job is cancelled at once.
        assert client.post(f"/jobs/{accepted.json()['job_id']}/cancel").status_code == 202


def test_a_run_that_would_not_fit_a_worker_is_refused_with_the_estimate(client, ready_dataset):
    # Within every bound, but 4096 blocks through 64 layers keep ~130 GiB of activations.
    body = {
        "dataset_id": ready_dataset["id"],
        "model": {"num_layers": 64},
        "training": {"batch_size": 4096},
    }
    before = _job_count(client)
    answer = client.post("/train", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith("this run needs about ")
    assert "GiB" in detail and "activations" in detail and "parameters" in detail
    assert "GISTNET_WORKER_MEMORY_BYTES" in detail and "training.batch_size (now 4096)" in detail
    assert _job_count(client) == before


def test_worker_memory_is_a_setting(api_stack, ready_dataset):
    body = {"dataset_id": ready_dataset["id"], "training": {"batch_size": 64}}
    small = _app_with(api_stack, worker_memory_bytes=8 * 2**20)
    with TestClient(small) as client:
        answer = client.post("/train", json=body)
        assert answer.status_code == 422 and "more than the 8.0 MiB" in answer.json()["detail"]


# --------------------------------------------------------------------------- gist text


def test_a_text_far_beyond_the_block_limit_is_413_before_it_is_tokenized(api_stack, trained_model):
    with TestClient(_app_with(api_stack, gist_max_blocks=4, gist_queue_size=4)) as client:
        huge = "once upon a time " * 30_000  # 510,000 characters, within the body limit
        answer = client.post("/gist", json={"model_id": trained_model["id"], "text": huge})
        assert answer.status_code == 413
        assert answer.json()["detail"].startswith("text has 510000 characters, more than 4")


def test_a_text_just_beyond_the_block_limit_is_413_and_one_within_it_is_cut(
    api_stack, trained_model, teacher
):
    from gistnet.teacher import load_tokenizer

    tokenizer = load_tokenizer(teacher)
    story = "once upon a time there was a small fox who lived by the river. " * 40
    ids = tokenizer(story, add_special_tokens=False)["input_ids"]
    fits = tokenizer.decode(ids[: 4 * 32 + 5])
    too_long = tokenizer.decode(ids[: 6 * 32])
    with TestClient(_app_with(api_stack, gist_max_blocks=4, gist_queue_size=4)) as client:
        answer = client.post("/gist", json={"model_id": trained_model["id"], "text": too_long})
        assert answer.status_code == 413
        assert answer.json()["detail"].startswith("the text makes more than 4 blocks")
        answer = client.post("/gist", json={"model_id": trained_model["id"], "text": fits})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["gists"]) == 4
