"""What the API answers before anything runs: validation (404/409/413/422/429), the API
key, readiness, and that a refused request queues nothing."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from gistnet.eval.request import EvalSettings
from gistnet.train_request import TrainSettings
from service.settings import load_settings
from tests.service_stack import wait_until

pytestmark = [pytest.mark.services]


def _dataset(teacher: str, **split) -> dict:
    return {
        "dataset_name": "req",
        "tokenizer": teacher,
        "teacher_model": teacher,
        "splits": {"train": split or {"documents": ["one two three " * 40]}},
    }


def _job_count(client) -> int:
    return client.get("/jobs").json()["count"]


# --------------------------------------------------------------------------- POST /datasets


@pytest.mark.parametrize(
    "source",
    ["/etc/passwd", "../outside.jsonl", "corpus/../../outside.jsonl", "~/corpus.jsonl"],
)
def test_dataset_source_that_leaves_the_data_root_is_refused(client, teacher, source):
    before = _job_count(client)
    answer = client.post("/datasets", json=_dataset(teacher, source=source))
    assert answer.status_code == 422
    assert "splits.train.source" in answer.json()["detail"]
    assert "data root" in answer.json()["detail"]
    assert _job_count(client) == before


def test_dataset_source_reaching_outside_through_a_symlink_is_refused(
    client, api_stack, teacher, tmp_path
):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"text": "not for you"}\n')
    link = api_stack.settings.data_root / "innocent.jsonl"
    link.symlink_to(outside)
    answer = client.post("/datasets", json=_dataset(teacher, source="innocent.jsonl"))
    assert answer.status_code == 422
    assert "outside the data root" in answer.json()["detail"]


def test_dataset_source_matching_no_file_is_refused(client, teacher):
    answer = client.post("/datasets", json=_dataset(teacher, source="nothing/*.jsonl"))
    assert answer.status_code == 422
    assert "matches no file" in answer.json()["detail"]


def test_dataset_source_under_the_data_root_is_queued(client, api_stack, teacher):
    corpus = api_stack.settings.data_root / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.jsonl").write_text('{"text": "a story"}\n')
    answer = client.post("/datasets", json=_dataset(teacher, source="corpus/*.jsonl"))
    assert answer.status_code == 202
    body = answer.json()
    assert body["status_url"] == f"/jobs/{body['job_id']}"
    job = client.get(body["status_url"]).json()
    assert job["status"] == "queued" and job["queue"] == "prep" and job["kind"] == "prepare"
    dataset = client.get(body["dataset_url"]).json()
    assert dataset["status"] == "pending" and dataset["job_id"] == body["job_id"]


def test_dataset_source_we_cannot_read_is_refused_naming_field_and_formats(
    client, api_stack, teacher
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = api_stack.settings.data_root / "formats"
    corpus.mkdir(exist_ok=True)
    (corpus / "notes.csv").write_text("a,b\n")
    pq.write_table(pa.table({"body": ["a story"]}), corpus / "stories.parquet")
    before = _job_count(client)
    answer = client.post("/datasets", json=_dataset(teacher, source="formats/notes.csv"))
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("splits.train.source: cannot read notes.csv")
    assert ".jsonl.zst" in answer.json()["detail"] and ".parquet" in answer.json()["detail"]
    answer = client.post("/datasets", json=_dataset(teacher, source="formats/stories.parquet"))
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("splits.train.text_column: ")
    assert "no column 'text' (it has body)" in answer.json()["detail"]
    assert _job_count(client) == before
    fixed = _dataset(teacher, source="formats/stories.parquet", text_column="body", shards=2)
    assert client.post("/datasets", json={**fixed, "teacher_states": "none"}).status_code == 202


def test_dataset_sharding_and_teacher_states_are_checked(client, teacher):
    capped = _dataset(teacher, documents=["x " * 80], shards=2, max_tokens=100)
    answer = client.post("/datasets", json=capped)
    assert answer.status_code == 422
    assert "cannot be combined with shards (2)" in answer.json()["detail"]
    answer = client.post("/datasets", json={**_dataset(teacher), "teacher_states": "some"})
    assert answer.status_code == 422 and "teacher_states" in answer.json()["detail"]


def test_dataset_stride_is_checked_and_shown(client, teacher):
    before = _job_count(client)
    answer = client.post("/datasets", json={**_dataset(teacher), "stride": 40})
    assert answer.status_code == 422
    assert "stride (40) must be at most block_size (32)" in answer.json()["detail"]
    assert _job_count(client) == before
    answer = client.post("/datasets", json={**_dataset(teacher), "stride": 8})
    assert answer.status_code == 202
    shown = client.get(f"/datasets/{answer.json()['dataset_id']}").json()
    assert shown["stride"] == 8 and shown["block_size"] == 32
    plain = client.post("/datasets", json=_dataset(teacher)).json()
    assert client.get(f"/datasets/{plain['dataset_id']}").json()["stride"] == 32


def test_dataset_with_a_missing_teacher_folder_is_refused_naming_it(client, teacher, tmp_path):
    body = _dataset(teacher)
    body["teacher_model"] = str(tmp_path / "no-such-teacher")
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422
    assert "no-such-teacher" in answer.json()["detail"]


def test_dataset_with_a_missing_tokenizer_is_refused_naming_it(client, teacher, tmp_path):
    body = _dataset(teacher)
    body["tokenizer"] = str(tmp_path / "no-such-tokenizer")
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422
    assert "no-such-tokenizer" in answer.json()["detail"]


@pytest.mark.parametrize("field", ["teacher_model", "tokenizer"])
def test_a_model_folder_outside_the_model_roots_gets_one_message_existing_or_not(
    client, teacher, tmp_path, field
):
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "config.json").write_text("{}")
    details = []
    for name in ("exists", "missing"):
        answer = client.post("/datasets", json={**_dataset(teacher), field: str(tmp_path / name)})
        assert answer.status_code == 422
        details.append(answer.json()["detail"].replace(name, "NAME"))
    assert details[0] == details[1] and "GISTNET_MODEL_ROOTS" in details[0]
    assert field in details[0]


def test_a_link_in_a_model_root_that_leads_out_gets_the_same_one_message(
    client, api_stack, teacher, tmp_path
):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text("{}")
    link = api_stack.settings.data_root / "models-link"
    link.symlink_to(tmp_path / "elsewhere")
    try:
        answer = client.post("/datasets", json={**_dataset(teacher), "teacher_model": str(link)})
    finally:
        link.unlink()
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "not a Hugging Face id nor a folder under the server's model roots" in detail
    assert "elsewhere" not in detail and str(tmp_path) not in detail


def test_a_hub_id_is_still_looked_up_on_the_hub(client, teacher):
    answer = client.post(
        "/datasets", json={**_dataset(teacher), "teacher_model": "no-org/no-model"}
    )
    assert answer.status_code == 422
    assert "GISTNET_MODEL_ROOTS" not in answer.json()["detail"]
    assert "no-org/no-model" in answer.json()["detail"]


def test_a_recursive_glob_through_a_link_loop_reads_each_file_once(client, api_stack, teacher):
    from api.validation.datasets import source_files

    folder = api_stack.settings.data_root / "looped"
    folder.mkdir()
    (folder / "story.txt").write_text("Once upon a time. " * 40)
    (folder / "again").symlink_to(folder)
    found = source_files(
        "looped/**/*.txt", data_store=api_stack.settings.data_store(), split="train"
    )
    assert found == ["looped/story.txt"]
    answer = client.post("/datasets", json=_dataset(teacher, source="looped/**/*.txt"))
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("source", ["uploads/*/train/*", "*/*/train/*.txt", "**/*.txt", "u*/x"])
def test_a_source_cannot_read_the_uploads_area(client, api_stack, teacher, source):
    upload = api_stack.settings.data_root / "uploads" / "someone" / "train"
    upload.mkdir(parents=True, exist_ok=True)
    (upload / "half.txt").write_text("half written " * 40)
    answer = client.post("/datasets", json=_dataset(teacher, source=source))
    assert answer.status_code == 422, answer.text
    assert "uploads/" in answer.json()["detail"]


def test_a_source_linked_into_the_uploads_area_is_refused(client, api_stack, teacher):
    (api_stack.settings.data_root / "uploads" / "other" / "train").mkdir(
        parents=True, exist_ok=True
    )
    (api_stack.settings.data_root / "uploads" / "other" / "train" / "a.txt").write_text("x " * 80)
    (api_stack.settings.data_root / "peek").symlink_to(api_stack.settings.data_root / "uploads")
    answer = client.post("/datasets", json=_dataset(teacher, source="peek/*/train/*.txt"))
    assert answer.status_code == 422 and "uploads/" in answer.json()["detail"]


def test_dataset_config_errors_name_the_key(client, teacher):
    unknown = {**_dataset(teacher), "blok_size": 32}
    assert "unknown key 'blok_size'" in client.post("/datasets", json=unknown).json()["detail"]
    uneven = {**_dataset(teacher), "block_size": 32, "horizon": 48}
    answer = client.post("/datasets", json=uneven)
    assert answer.status_code == 422 and "multiple of block_size" in answer.json()["detail"]
    too_long = {**_dataset(teacher), "horizon": 4096}
    answer = client.post("/datasets", json=too_long)
    assert answer.status_code == 422 and "teacher's context" in answer.json()["detail"]


def test_dataset_output_path_is_refused(client, teacher):
    answer = client.post(
        "/datasets", json=_dataset(teacher, documents=["x " * 80], output_path="/tmp/x.arrow")
    )
    assert answer.status_code == 422 and "output_path" in answer.json()["detail"]


@pytest.mark.parametrize(
    "name", ["../../../../../tmp/x/owned", "/tmp/x/owned", "../20/train", "a/b"]
)
def test_a_split_name_that_is_a_path_is_refused_naming_the_field(client, teacher, name):
    before = _job_count(client)
    body = {**_dataset(teacher), "splits": {name: {"documents": ["one two three " * 40]}}}
    answer = client.post("/datasets", json=body)
    assert answer.status_code == 422, answer.text
    assert "splits" in answer.json()["detail"] and "split name" in answer.json()["detail"]
    assert _job_count(client) == before


# --------------------------------------------------------------------------- POST /train


def _train(dataset_id: int, **model) -> dict:
    return {"dataset_id": dataset_id, "model": model, "training": {"max_steps": 5}}


def test_train_on_an_unknown_dataset_is_404(client):
    answer = client.post("/train", json=_train(999_999))
    assert answer.status_code == 404 and "999999" in answer.json()["detail"]


def test_train_on_a_dataset_not_ready_is_409(client, teacher):
    pending = client.post("/datasets", json=_dataset(teacher)).json()
    before = _job_count(client)
    answer = client.post("/train", json=_train(pending["dataset_id"]))
    assert answer.status_code == 409
    assert "not ready" in answer.json()["detail"]
    assert f"/jobs/{pending['job_id']}" in answer.json()["detail"]
    assert _job_count(client) == before


@pytest.mark.parametrize(
    ("model", "split", "expected"),
    [
        ({"hidden_size": 64}, "train", "teacher_hidden_size is 128"),
        ({"block_size": 16}, "train", "blocks of 32"),
        ({"num_heads": 3}, "train", "not divisible by num_heads"),
        # the sample teacher has 4 blocks: hidden states 0 to 4
        ({"teacher_layers": [5]}, "train", "model.teacher_layers [5] names hidden state 5"),
        ({"teacher_layers": [-1]}, "train", "indices >= 0"),
        ({}, "test", "no split 'test'"),
    ],
)
def test_train_that_does_not_fit_the_dataset_is_422_and_queues_nothing(
    client, ready_dataset, model, split, expected
):
    before = _job_count(client)
    answer = client.post("/train", json={**_train(ready_dataset["id"], **model), "split": split})
    assert answer.status_code == 422
    assert expected in answer.json()["detail"]
    assert _job_count(client) == before


def test_train_with_a_bad_training_value_is_422_naming_it(client, ready_dataset):
    body = {"dataset_id": ready_dataset["id"], "training": {"lr": -1}}
    answer = client.post("/train", json=body)
    assert answer.status_code == 422 and "training.lr" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"reconstruction_steps": 10}, "training: reconstruction_steps was removed"),
        ({"log_every": 10}, "training: log_every is how often the command line prints"),
    ],
)
def test_train_naming_what_is_not_a_run_setting_is_422_saying_why(
    client, ready_dataset, training, expected
):
    body = {"dataset_id": ready_dataset["id"], "training": training}
    answer = client.post("/train", json=body)
    assert answer.status_code == 422 and expected in answer.json()["detail"]


def test_train_takes_a_named_preset_under_the_keys_it_sets_and_refuses_an_unknown_one(
    client, ready_dataset
):
    body = {"dataset_id": ready_dataset["id"], "preset": "substitution"}
    assert client.post("/train", json=body).status_code == 202
    # the preset's bos_sink reaches the checks: BOS and 32 gists do not fit a block of 32
    crowded = client.post("/train", json={**body, "model": {"gists_per_block": 32}})
    assert crowded.status_code == 422 and "bos_sink puts BOS" in crowded.json()["detail"]
    fits = {**body, "model": {"gists_per_block": 32, "bos_sink": False}}
    assert client.post("/train", json=fits).status_code == 202
    unknown = client.post("/train", json={**body, "preset": "fastest"})
    assert unknown.status_code == 422
    assert "unknown preset 'fastest': the presets are substitution" in unknown.json()["detail"]


def test_train_takes_the_multiblock_objective_and_refuses_windows_too_short_for_its_blocks(
    client, api_stack, ready_dataset
):
    """The ready dataset's windows are 64 tokens, two blocks of 32: one block and its
    horizon, not two."""
    from service.db.engine import session_scope
    from service.db.models import Job

    before = _job_count(client)
    body = {"dataset_id": ready_dataset["id"], "training": {"objective": "multiblock"}}
    short = {**body, "training": {**body["training"], "blocks": 2}}
    answer = client.post("/train", json=short)
    assert answer.status_code == 422 and _job_count(client) == before
    detail = answer.json()["detail"]
    assert "training.blocks 2" in detail and "windows are 64 tokens" in detail
    assert "prepare it with horizon >= 96" in detail
    accepted = client.post("/train", json=body)
    assert accepted.status_code == 202
    with session_scope(api_stack.settings.database_url) as session:
        params = session.get(Job, accepted.json()["job_id"]).params  # what the worker reads
    training = TrainSettings.from_dict(params).run.training
    assert (training.objective, training.blocks, training.compressed_blocks) == (
        "multiblock",
        1,
        None,
    )


def test_train_that_fits_is_queued_on_the_train_queue(client, ready_dataset):
    answer = client.post("/train", json=_train(ready_dataset["id"], hidden_size=128))
    assert answer.status_code == 202
    job = client.get(answer.json()["status_url"]).json()
    assert job["kind"] == "train" and job["queue"] == "train" and job["status"] == "queued"


# --------------------------------------------------------------------------- jobs, models


def test_unknown_job_model_and_evaluation_are_404(client):
    for path in ("/jobs/424242", "/jobs/424242/metrics", "/models/424242", "/evaluations/424242"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "424242" in answer.json()["detail"]
    assert client.post("/jobs/424242/cancel").status_code == 404


def test_cancelling_a_queued_job_cancels_it_at_once_and_a_finished_one_is_409(
    client, teacher, trained_model
):
    queued = client.post("/datasets", json=_dataset(teacher)).json()
    answer = client.post(f"/jobs/{queued['job_id']}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    assert client.get(queued["dataset_url"]).json()["status"] == "cancelled"
    finished = client.post(f"/jobs/{trained_model['job_id']}/cancel")
    assert finished.status_code == 409 and "already succeeded" in finished.json()["detail"]


def test_model_is_listed_with_its_configs(client, trained_model):
    model = client.get(f"/models/{trained_model['id']}").json()
    assert model["model_config"]["hidden_size"] == 128
    assert model["training_config"]["max_steps"] == 3
    assert model["latest_evaluation"] is None
    assert trained_model["id"] in [m["id"] for m in client.get("/models").json()["data"]]


# --------------------------------------------------------------------------- evaluations


def test_evaluation_requests_are_checked_before_queueing(
    client, teacher, ready_dataset, trained_model
):
    unknown_model = {"model_id": 999_999, "dataset_id": ready_dataset["id"]}
    assert client.post("/evaluations", json=unknown_model).status_code == 404
    unknown_data = {"model_id": trained_model["id"], "dataset_id": 999_999}
    assert client.post("/evaluations", json=unknown_data).status_code == 404
    pending = client.post("/datasets", json=_dataset(teacher)).json()
    not_ready = {"model_id": trained_model["id"], "dataset_id": pending["dataset_id"]}
    assert client.post("/evaluations", json=not_ready).status_code == 409
    no_split = {"model_id": trained_model["id"], "dataset_id": ready_dataset["id"], "split": "x"}
    answer = client.post("/evaluations", json=no_split)
    assert answer.status_code == 422 and "no split 'x'" in answer.json()["detail"]
    fine = {"model_id": trained_model["id"], "dataset_id": ready_dataset["id"]}
    answer = client.post("/evaluations", json=fine)
    assert answer.status_code == 202
    evaluation = client.get(answer.json()["evaluation_url"]).json()
    assert evaluation["status"] == "pending" and evaluation["split"] == "validation"
    assert (
        client.get(f"/models/{trained_model['id']}").json()["latest_evaluation"]["id"]
        == (evaluation["id"])
    )


def test_evaluation_takes_an_oracle_size_and_refuses_a_bad_one(
    client, ready_dataset, trained_model
):
    body = {"model_id": trained_model["id"], "dataset_id": ready_dataset["id"]}
    bad = client.post("/evaluations", json={**body, "oracle_examples": 0})
    assert bad.status_code == 422 and "oracle_examples" in bad.text
    answer = client.post("/evaluations", json={**body, "oracle_examples": 8})
    assert answer.status_code == 202


def test_evaluation_takes_refine_settings_and_refuses_bad_ones(
    client, ready_dataset, trained_model
):
    body = {"model_id": trained_model["id"], "dataset_id": ready_dataset["id"]}
    for bad, field in (({"samples": 0}, "samples"), ({"steps": 10**6}, "steps"),
                       ({"temperature": 1e-40}, "temperature"), ({"spread": 1}, "spread")):  # fmt: skip
        answer = client.post("/evaluations", json={**body, "refine": bad})
        assert answer.status_code == 422 and field in answer.text, bad
    answer = client.post("/evaluations", json={**body, "refine": {"samples": 2, "steps": 3}})
    assert answer.status_code == 202


def test_evaluation_takes_the_long_mode_and_refuses_a_context_its_windows_cannot_hold(
    client, api_stack, ready_dataset, trained_model
):
    from service.db.engine import session_scope
    from service.db.models import Job

    body = {"model_id": trained_model["id"], "dataset_id": ready_dataset["id"], "mode": "long"}
    # the dataset's windows are 64 tokens of blocks of 32
    fine = {**body, "context_tokens": 48, "recent_tokens": 16, "score_tokens": 16}
    answer = client.post("/evaluations", json=fine)
    assert answer.status_code == 202
    with session_scope(api_stack.settings.database_url) as session:
        params = session.get(Job, answer.json()["job_id"]).params  # what the worker reads
    assert EvalSettings.from_dict(params) == EvalSettings(
        mode="long", context_tokens=48, recent_tokens=16, score_tokens=16
    )
    for bad, field in (
        ({"context_tokens": 80, "recent_tokens": 16, "score_tokens": 16}, "horizon >= 96"),
        ({"context_tokens": 56, "recent_tokens": 16, "score_tokens": 8}, "multiple of"),
        ({"recent_tokens": 16}, "context_tokens"),
        ({"context_tokens": 48, "recent_tokens": 16, "oracle_examples": 4}, "oracle_examples"),
        ({"context_tokens": 0}, "context_tokens"),
    ):
        answer = client.post("/evaluations", json={**body, **bad})
        assert answer.status_code == 422 and field in answer.text, bad
    blocks = {**body, "mode": "blocks", "context_tokens": 48}
    answer = client.post("/evaluations", json=blocks)
    assert answer.status_code == 422 and "mode 'long'" in answer.text


# --------------------------------------------------------------------------- POST /gist


def test_gist_block_of_the_wrong_length_is_422_naming_its_index(client, trained_model):
    blocks = [[1] * 32, [2] * 32, [3] * 31]
    answer = client.post("/gist", json={"model_id": trained_model["id"], "blocks": blocks})
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "blocks[2] has 31 token ids; this model's blocks have exactly 32"
    )


def test_gist_token_outside_the_vocabulary_is_422_naming_index_and_position(client, trained_model):
    blocks = [[1] * 32, [5] * 7 + [10**6] + [5] * 24]
    answer = client.post("/gist", json={"model_id": trained_model["id"], "blocks": blocks})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith("blocks[1][7] is 1000000, outside the teacher's vocabulary")
    negative = client.post("/gist", json={"blocks": [[-1] + [1] * 31]})
    assert negative.status_code == 422 and "blocks[0][0] is -1" in negative.json()["detail"]


def test_gist_with_more_blocks_than_allowed_is_413(client, api_stack, trained_model):
    too_many = api_stack.settings.gist_max_blocks + 1
    answer = client.post("/gist", json={"blocks": [[1] * 32] * too_many})
    assert answer.status_code == 413
    assert "GISTNET_GIST_MAX_BLOCKS" in answer.json()["detail"]


def test_gist_needs_blocks_or_text_and_a_known_model(client, trained_model):
    assert client.post("/gist", json={}).status_code == 422
    both = {"blocks": [[1] * 32], "text": "hello"}
    assert client.post("/gist", json=both).status_code == 422
    short = client.post("/gist", json={"text": "too short"})
    assert short.status_code == 422 and "fewer than one block" in short.json()["detail"]
    unknown = client.post("/gist", json={"model_id": 999_999, "blocks": [[1] * 32]})
    assert unknown.status_code == 404


def test_gist_queue_full_answers_429_instead_of_waiting(api_stack, trained_model):
    # A queue that holds 4 blocks and waits 3 s for a batch to fill: while the first
    # request waits there, the next one finds the queue full.
    settings = load_settings(
        **{
            **api_stack.settings.model_dump(exclude={"api_key"}),
            "gist_max_blocks": 4,
            "gist_queue_size": 4,
            "gist_batch_wait_ms": 3000,
        }
    )
    with TestClient(create_app(settings)) as client:
        body = {"model_id": trained_model["id"], "blocks": [[1] * 32] * 4}
        assert client.post("/gist", json=body).status_code == 200  # loads the model
        first: dict = {}
        waiting = threading.Thread(target=lambda: first.update(r=client.post("/gist", json=body)))
        started = time.monotonic()
        waiting.start()
        wait_until(
            lambda: client.get("/health").json()["gist_queue_blocks"] == 4,
            timeout=2,
            interval=0.01,
            what="the first request waiting in the queue",
        )
        refused = client.post("/gist", json={**body, "blocks": [[2] * 32]})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "queue is full" in refused.json()["detail"]
        assert "gistnet_gist_queue_full_total 1.0" in client.get("/metrics").text
        waiting.join()
        assert first["r"].status_code == 200 and len(first["r"].json()["gists"]) == 4
        assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- key, health


def test_api_key_guards_every_endpoint_but_health(api_stack):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "api_key": "s3cret"}
    )
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        routes = [
            (method.upper(), path.replace("{", "").replace("}", "").replace("_id", "1"))
            for path, item in app.openapi()["paths"].items()
            for method in item
            if path != "/health"
        ]
        assert len(routes) >= 14
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                answer = client.request(method, path, headers=headers, json={})
                assert answer.status_code == 401, (method, path, headers)
                assert answer.headers["www-authenticate"] == "Bearer"
        ok = client.get("/jobs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_ready_checks_database_broker_and_artifacts(client, api_stack):
    answer = client.get("/ready")
    assert answer.status_code == 200
    assert answer.json() == {
        "ready": True,
        "checks": {"database": "ok", "broker": "ok", "artifacts": "ok"},
    }
    settings = load_settings(
        **{
            **api_stack.settings.model_dump(exclude={"api_key"}),
            "broker_url": "redis://127.0.0.1:1/0",
        }
    )
    with TestClient(create_app(settings)) as broken:
        answer = broken.get("/ready")
        assert answer.status_code == 503
        checks = answer.json()["checks"]
        assert checks["database"] == "ok" and checks["broker"].startswith("unavailable")


def test_info_names_versions_device_loaded_models_and_the_limits_in_force(api_stack, trained_model):
    import platform

    import transformers

    import gistnet

    settings = load_settings(
        **{
            **api_stack.settings.model_dump(exclude={"api_key"}),
            "limits": {"training.max_steps": 77},
            "gist_max_body_bytes": 4096,
        }
    )
    with TestClient(create_app(settings)) as client:
        before = client.get("/info").json()
        assert before["models_loaded"] == []
        body = {"model_id": trained_model["id"], "blocks": [[1] * 32]}
        assert client.post("/gist", json=body).status_code == 200
        info = client.get("/info").json()
    assert info["versions"] == {
        "gistnet": gistnet.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    assert info["device"] == "cpu"
    assert info["models_loaded"] == [trained_model["id"]]
    assert info["limits"]["training.max_steps"] == 77
    assert info["limits"]["block_size"] == settings.request_limits["block_size"]
    assert info["max_body_bytes"]["POST /gist"] == 4096
    assert info["worker_memory_bytes"] == settings.worker_memory


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/gist" in client.get("/openapi.json").json()["paths"]


def test_gist_of_a_model_with_two_vectors_per_block_is_n_by_2_by_d(client, two_gist_model):
    import base64

    import numpy as np
    import torch

    from gistnet.inference import GistEncoder

    blocks = [[5] * 32, list(range(3, 35))]
    answer = client.post("/gist", json={"model_id": two_gist_model["id"], "blocks": blocks})
    assert answer.status_code == 200
    body = answer.json()
    assert body["gists_per_block"] == 2
    gists = np.asarray(body["gists"], dtype=np.float32)
    assert gists.shape == (2, 2, body["dim"])
    expected = GistEncoder.from_checkpoint(two_gist_model["checkpoint"]).encode(
        torch.tensor(blocks)
    )
    np.testing.assert_allclose(gists, expected.numpy(), atol=1e-5)
    packed = client.post(
        "/gist",
        json={"model_id": two_gist_model["id"], "blocks": blocks, "encoding": "base64"},
    ).json()
    raw = np.frombuffer(base64.b64decode(packed["gists"][0]), dtype="<f4")
    np.testing.assert_allclose(raw.reshape(2, -1), gists[0], atol=1e-6)


def test_gist_of_a_one_vector_model_keeps_the_n_by_d_shape(client, trained_model):
    answer = client.post("/gist", json={"model_id": trained_model["id"], "blocks": [[5] * 32]})
    body = answer.json()
    assert body["gists_per_block"] == 1
    assert body["bos_sink"] is False and body["sink_token_id"] is None
    assert len(body["gists"]) == 1 and len(body["gists"][0]) == body["dim"]


def test_gist_of_a_model_reading_more_teacher_layers_is_its_encoders(client, layers_model):
    from gistnet.inference import GistEncoder

    block = list(range(3, 35))
    answer = client.post("/gist", json={"model_id": layers_model["id"], "blocks": [block]})
    assert answer.status_code == 200
    encoder = GistEncoder.from_checkpoint(layers_model["checkpoint"])
    assert encoder.model.config.teacher_layers == (0, 2)
    expected = encoder.encode(torch.tensor([block]))[0]
    torch.testing.assert_close(torch.tensor(answer.json()["gists"][0]), expected, atol=1e-5, rtol=0)


def test_gist_of_a_bos_sink_model_says_where_the_gists_are_read(client, sink_model):
    from gistnet.inference import GistEncoder

    answer = client.post("/gist", json={"model_id": sink_model["id"], "blocks": [[5] * 32]})
    assert answer.status_code == 200
    body = answer.json()
    encoder = GistEncoder.from_checkpoint(sink_model["checkpoint"])
    assert body["bos_sink"] is True
    assert encoder.tokenizer.bos_token_id is not None
    assert body["sink_token_id"] == encoder.tokenizer.bos_token_id
    assert len(body["gists"]) == 1 and len(body["gists"][0]) == body["dim"]


def test_refined_gists_are_the_encoders_refined_gists(client, sink_model):
    from gistnet.inference import GistEncoder
    from gistnet.refine import RefineSettings

    blocks = [list(range(3, 35)), [5] * 32]
    refine = {"samples": 2, "steps": 4, "seed": 3}
    answer = client.post(
        "/gist", json={"model_id": sink_model["id"], "blocks": blocks, "refine": refine}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["refine"] == {**refine, "lr": 0.05, "temperature": 0.8}
    assert body["bos_sink"] is True
    encoder = GistEncoder.from_checkpoint(sink_model["checkpoint"])
    ids = torch.tensor(blocks)
    expected = encoder.encode(ids, refine=RefineSettings(**body["refine"]))
    got = torch.tensor(body["gists"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, encoder.encode(ids))  # refinement moved them
    plain = client.post("/gist", json={"model_id": sink_model["id"], "blocks": blocks}).json()
    assert plain["refine"] is None


def test_refinement_beyond_the_servers_work_bound_is_413_and_bad_settings_422(
    client, api_stack, trained_model
):
    bound = api_stack.settings.gist_refine_max_work
    blocks = [[5] * 32] * 4
    steps = bound // (4 * 8) + 1  # 4 blocks x 8 samples x steps > bound
    answer = client.post("/gist", json={"blocks": blocks, "refine": {"samples": 8, "steps": steps}})
    assert answer.status_code == 413
    detail = answer.json()["detail"]
    assert f"4 blocks x 8 samples x {steps} steps" in detail
    assert "GISTNET_GIST_REFINE_MAX_WORK" in detail
    bad = client.post("/gist", json={"blocks": blocks, "refine": {"samples": 65}})
    assert bad.status_code == 422 and "samples" in bad.text


def test_the_refine_lane_refuses_beyond_its_capacity_at_once(trained_model):
    import asyncio
    from pathlib import Path

    import numpy as np

    from api.batching import QueueFull, RefineLane
    from api.engine import GistEngine
    from gistnet.refine import RefineSettings

    engine = GistEngine(
        model_id=trained_model["id"], checkpoint=Path(trained_model["checkpoint"]),
        device="cpu", max_batch=64,
    )  # fmt: skip
    blocks = np.full((2, 32), 5, dtype=np.int64)

    async def two_at_once():
        lane = RefineLane(capacity=1)
        await lane.start()
        try:
            first = asyncio.create_task(lane.encode(engine, blocks, RefineSettings(steps=30)))
            await asyncio.sleep(0)  # the first request now holds the lane's one place
            with pytest.raises(QueueFull, match="GISTNET_GIST_REFINE_QUEUE"):
                await lane.encode(engine, blocks, RefineSettings(steps=1))
            gists = await first
            assert gists.shape == (2, engine.dim) and lane.waiting == 0
        finally:
            await lane.stop()

    asyncio.run(two_at_once())


def test_train_asking_for_mlflow_on_a_server_without_one_is_422(client, ready_dataset):
    body = {"dataset_id": ready_dataset["id"], "tracking": {"mlflow": True}}
    answer = client.post("/train", json=body)
    assert answer.status_code == 422
    assert "GISTNET_MLFLOW_TRACKING_URI" in answer.json()["detail"]
