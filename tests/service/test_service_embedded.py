"""The embedded default: `gistnet serve` alone (SQLite records, the SQLite broker, one
local worker for both queues, the API) runs the whole flow over HTTP, and stopping it
stops everything it started."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from tests.service_stack import (
    ServiceProcess,
    dataset_body,
    make_stack,
    sample_teacher,
    tiny_documents,
    train_body,
    wait_for_job,
    wait_until,
)
from tools.processes import free_port

pytestmark = [pytest.mark.slow]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_gistnet_serve_runs_dataset_training_and_gists_on_sqlite_alone(tmp_path):
    from gistnet.inference import GistEncoder

    stack = make_stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path}/var/gistnet.sqlite",
        broker_url=f"sqla+sqlite:///{tmp_path}/var/broker.sqlite",
    )
    port = free_port(8000)
    server = ServiceProcess(
        ["serve", "--port", str(port)], env=stack.env, log_path=tmp_path / "serve.log"
    ).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            server.wait_for_log(f"Uvicorn running on http://127.0.0.1:{port}")
            server.wait_for_log(" ready.")  # the local worker
            assert client.get("/ready").json()["ready"] is True

            accepted = client.post(
                "/datasets", json=dataset_body(sample_teacher(), tiny_documents())
            )
            assert accepted.status_code == 202, accepted.text
            assert wait_for_job(client, accepted.json()["job_id"])["status"] == "succeeded"

            started = client.post("/train", json=train_body(accepted.json()["dataset_id"]))
            job = wait_for_job(client, started.json()["job_id"])
            assert job["status"] == "succeeded", job
            assert client.get(f"/jobs/{job['id']}/metrics").json()["count"] == 12
            model = client.get(f"/models/{job['result']['model_id']}").json()

            blocks = np.random.default_rng(2).integers(0, 500, size=(3, 32)).tolist()
            gists = client.post("/gist", json={"blocks": blocks}).json()
            direct = GistEncoder.from_checkpoint(
                stack.settings.artifact_path(model["checkpoint_path"])
            ).encode(torch.tensor(blocks))
            np.testing.assert_allclose(gists["gists"], direct.numpy(), rtol=1e-5, atol=1e-5)
            assert (tmp_path / "var" / "gistnet.sqlite").is_file()
            assert (tmp_path / "var" / "broker.sqlite").is_file()

        started_by_serve = _children(server.process.pid)
        assert started_by_serve, "serve started no worker process"
    finally:
        server.stop(timeout=60)
    wait_until(
        lambda: not any(_alive(pid) for pid in started_by_serve),
        timeout=30,
        what="the worker started by serve to stop",
    )
