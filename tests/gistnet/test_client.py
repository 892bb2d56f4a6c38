"""gistnet.client and the `gistnet` client verbs against a running `gistnet serve`: the
whole flow (upload, prepare, train, evaluate, gists) from Python and from the terminal,
errors that carry the server's message, and the event stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from gistnet.client import APIError, Client, JobFailed, ServerUnreachable
from gistnet.teacher import load_tokenizer
from tests.conftest import SERVICE_KEY
from tests.service_stack import REPO, dataset_body, sample_teacher, tiny_documents
from tools.cli import main as cli

pytestmark = [pytest.mark.slow]


def write_corpus_config(folder: Path, name: str) -> Path:
    """A dataset config file as a user keeps one: sources and the teacher relative to it."""
    documents = tiny_documents(10, seed=7)
    (folder / "corpus").mkdir()
    (folder / "corpus" / "train.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in documents[:-2])
    )
    for i, document in enumerate(documents[-2:]):
        (folder / "corpus" / f"held_out_{i}.txt").write_text(document)
    teacher = Path(sample_teacher())
    config = {
        "dataset_name": name,
        "tokenizer": str(teacher),
        "teacher_model": str(teacher),
        "splits": {
            "train": {"source": "corpus/train.jsonl", "output_path": "out/train.arrow"},
            "validation": {"source": "corpus/held_out_*.txt"},
        },
    }
    path = folder / "dataset.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_run_config(folder: Path, steps: int) -> Path:
    run = yaml.safe_load((REPO / "configs/runs/gistnet_example.yaml").read_text())
    run["training"].update(max_steps=steps, batch_size=8, eval_every=5)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


@pytest.fixture
def client(running_service):
    with Client(running_service.url, api_key=SERVICE_KEY) as client:
        yield client


def test_client_uploads_prepares_trains_evaluates_and_gists(client, tmp_path):
    accepted = client.create_dataset(write_corpus_config(tmp_path, "client-flow"))
    prepared = client.wait(accepted, progress=True)
    assert prepared["status"] == "succeeded"
    dataset = client.dataset(accepted["dataset_id"])
    assert dataset["status"] == "ready" and set(dataset["splits"]) == {"train", "validation"}
    assert dataset["sources"]["train"].startswith("uploads/")

    started = client.train(dataset["id"], write_run_config(tmp_path, 20), max_steps=12)
    job = client.wait(started["job_id"], progress=True, timeout=180)
    assert job["progress"]["step"] == 12  # the keyword overrode the file
    model_id = job["result"]["model_id"]
    assert [p["step"] for p in client.job_metrics(job)] == list(range(1, 13))

    evaluation = client.evaluate(
        model_id, max_examples=32, bootstrap_samples=20, refine={"samples": 2, "steps": 2}
    )
    client.wait(evaluation, timeout=180)
    report = client.evaluation(evaluation["evaluation_id"])["report"]
    assert {"full", "gist", "drop", "refined", "swapped_refined"} <= set(report["conditions"])
    assert report["refine"]["samples"] == 2 and report["refine"]["steps"] == 2
    assert client.model(model_id)["latest_evaluation"]["id"] == evaluation["evaluation_id"]
    long = client.evaluate(model_id, max_examples=8, bootstrap_samples=20, mode="long",
                           context_tokens=48, recent_tokens=16, score_tokens=16)  # fmt: skip
    client.wait(long, timeout=180)
    report = client.evaluation(long["evaluation_id"])["report"]
    assert report["mode"] == "long" and report["compressed_positions"] == 17
    assert set(report["conditions"]) == {"full", "truncated", "compressed", "mean", "recent"}

    story = tiny_documents(1, seed=5)[0]
    gists = client.gist(story, model_id=model_id)
    answer = client.request("POST", "/gist", json={"text": story, "model_id": model_id})
    assert gists.dtype == np.float32 and gists.shape == (len(answer["gists"]), answer["dim"])
    np.testing.assert_array_equal(gists, np.asarray(answer["gists"], dtype=np.float32))
    blocks = np.random.default_rng(3).integers(0, 500, size=(2, 32))
    exact = client.gist(blocks, model_id=model_id)  # base64: the float32 bytes as computed
    as_floats = client.gist(blocks.tolist(), model_id=model_id, encoding="float")
    np.testing.assert_allclose(exact, as_floats, rtol=1e-6)
    layout = client.gist_answer(blocks, model_id=model_id)
    np.testing.assert_array_equal(layout.vectors, exact)
    refined = client.gist(blocks, model_id=model_id, refine={"samples": 2, "steps": 3})
    assert refined.shape == exact.shape and not np.allclose(refined, exact)
    assert layout.model_id == model_id and layout.gists_per_block == 1
    assert layout.bos_sink is False and layout.sink_token_id is None  # the example config
    # a model whose gists are read after BOS (the substitution preset's) says so, and
    # which token that is
    sunk = client.train(dataset["id"], {"preset": "substitution"}, max_steps=2, batch_size=8)
    sunk_id = client.wait(sunk["job_id"], timeout=180)["result"]["model_id"]
    layout = client.gist_answer(blocks, model_id=sunk_id)
    assert layout.bos_sink is True and layout.vectors.shape == (2, answer["dim"])
    tokenizer = load_tokenizer(sample_teacher())
    assert layout.sink_token_id == tokenizer.bos_token_id is not None

    # The event stream of a finished job: its state, every point, the end.
    events = list(client.events(job))
    assert [name for name, _ in events] == ["state", "metrics", "end"]
    assert len(events[1][1]["data"]) == 12 and events[-1][1]["status"] == "succeeded"
    assert [name for name, _ in client.events(job, after_step=12)] == ["state", "end"]


def test_client_errors_carry_the_servers_message(client, running_service):
    with pytest.raises(APIError) as refused:
        client.train(999_999)
    assert refused.value.status_code == 404
    assert "dataset 999999 does not exist" in str(refused.value)
    with pytest.raises(APIError) as locked:
        Client(running_service.url, api_key="wrong").datasets()
    assert locked.value.status_code == 401 and "API key" in locked.value.detail
    with pytest.raises(ServerUnreachable):
        Client("http://127.0.0.1:9", api_key=SERVICE_KEY, timeout=2).jobs()


def test_wait_raises_when_the_job_is_cancelled(client):
    prepared = client.create_dataset(dataset_body(sample_teacher(), tiny_documents(6)))
    client.wait(prepared)
    started = client.train(prepared["dataset_id"], max_steps=100_000, batch_size=8)
    client.cancel(started)
    with pytest.raises(JobFailed) as stopped:
        client.wait(started, timeout=60)
    assert stopped.value.job["status"] == "cancelled"
    assert "cancelled" in str(stopped.value)


def test_cli_drives_the_flow_with_url_and_key_from_the_environment(
    running_service, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GISTNET_URL", running_service.url)
    monkeypatch.setenv("GISTNET_API_KEY", SERVICE_KEY)
    config = write_corpus_config(tmp_path, "cli-flow")

    assert cli(["datasets", "create", str(config), "--wait"]) == 0
    out = capsys.readouterr()
    assert "prepare job" in out.out and "succeeded" in out.out
    assert cli(["datasets", "--json"]) == 0
    dataset = next(d for d in json.loads(capsys.readouterr().out) if d["name"] == "cli-flow")

    run = write_run_config(tmp_path, 8)
    assert cli(["train", str(dataset["id"]), "--config", str(run), "--wait"]) == 0
    out = capsys.readouterr()
    assert "train job" in out.out and "succeeded" in out.out and "model_id" in out.out
    assert "step" in out.err  # the progress bar, drawn from the event stream

    assert cli(["jobs"]) == 0
    assert "train" in capsys.readouterr().out
    assert cli(["train", str(dataset["id"]), "--config", str(run), "--json"]) == 0
    job_id = json.loads(capsys.readouterr().out)["job_id"]
    assert cli(["jobs", str(job_id), "--follow"]) == 0
    out = capsys.readouterr()
    assert f"train job {job_id}: succeeded" in out.out
    assert cli(["jobs", str(job_id), "--logs"]) == 0
    logged = capsys.readouterr().out.splitlines()
    assert "INFO" in logged[0] and f"job {job_id} (train) attempt 1 started" in logged[0]
    assert "recording it succeeded" in logged[-1]
    assert cli(["jobs", str(job_id), "--logs", "--follow"]) == 0  # a finished job: all, then out
    assert capsys.readouterr().out.splitlines() == logged

    saved = tmp_path / "gists.npy"
    story = tiny_documents(1, seed=11)[0]
    assert cli(["gist", "--text", story, "--output", str(saved)]) == 0
    out = capsys.readouterr().out
    with Client(running_service.url, api_key=SERVICE_KEY) as client:
        expected = client.gist(story)
    assert f"{len(expected)} gists of dimension {expected.shape[1]}" in out
    np.testing.assert_array_equal(np.load(saved), expected)
    # refined from the block: the service's refined gists, seeded, so the same again
    refine = ["--refine-samples", "2", "--refine-steps", "3"]
    assert cli(["gist", "--text", story, "--output", str(saved), *refine]) == 0
    with Client(running_service.url, api_key=SERVICE_KEY) as client:
        refined = client.gist(story, refine={"samples": 2, "steps": 3})
    np.testing.assert_array_equal(np.load(saved), refined)
    assert not np.allclose(refined, expected)


def test_cli_prints_the_servers_message_and_fails(running_service, capsys):
    url = ["--url", running_service.url, "--api-key", SERVICE_KEY]
    assert cli(["train", "999999", *url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gistnet: POST /train -> 404: dataset 999999 does not exist")
    assert cli(["jobs", *url[:2], "--api-key", "wrong"]) == 1
    assert "401" in capsys.readouterr().err
    assert cli(["datasets", "create", "/nonexistent.yaml", *url]) == 2
    assert "nonexistent.yaml" in capsys.readouterr().err
