"""gistnet.async_client.AsyncClient against a running `gistnet serve`: the methods of
Client, awaited, with the same answers; its streams (events, wait, logs) as async
iterators; the server's errors raised as Client raises them."""

from __future__ import annotations

import asyncio
import inspect

import numpy as np
import pytest

from gistnet.async_client import AsyncClient
from gistnet.client import APIError, Client, JobFailed, ServerUnreachable
from tests.conftest import SERVICE_KEY
from tests.service_stack import dataset_body, sample_teacher, tiny_documents

pytestmark = [pytest.mark.slow]


def test_every_method_of_client_is_a_coroutine_or_async_stream_of_async_client():
    public = {n for n in dir(Client) if not n.startswith("_") and callable(getattr(Client, n))}
    assert {"datasets", "train", "wait", "events", "gist", "job_logs", "info"} <= public
    for name in public - {"close"}:
        method = getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name
        ours, theirs = inspect.signature(method), inspect.signature(getattr(Client, name))
        assert ours.parameters == theirs.parameters, name  # an iterator becomes an async one


def test_async_client_prepares_trains_follows_and_gists(running_service):
    async def flow():
        async with AsyncClient(running_service.url, api_key=SERVICE_KEY) as gn:
            accepted = await gn.create_dataset(
                dataset_body(sample_teacher(), tiny_documents(6, seed=11), name="async")
            )
            prepared = await gn.wait(accepted, timeout=180)
            dataset = await gn.dataset(accepted["dataset_id"])
            started = await gn.train(dataset["id"], max_steps=4, batch_size=8)
            seen = [event async for event, _ in gn.events(started)]
            job = await gn.wait(started, timeout=180)
            logs = await gn.job_logs(job, tail=2)
            followed = [line async for line in gn.follow_logs(job)]
            info, models = await gn.info(), await gn.models()
            gists = await gn.gist(tiny_documents(1, seed=5)[0], model_id=job["result"]["model_id"])
            return prepared, dataset, seen, job, logs, followed, info, models, gists

    prepared, dataset, seen, job, logs, followed, info, models, gists = asyncio.run(flow())
    assert prepared["status"] == "succeeded" and dataset["status"] == "ready"
    assert seen[-1] == "end" and "state" in seen
    assert job["status"] == "succeeded" and job["progress"]["step"] == 4
    assert len(logs) == 2 and "recording it succeeded" in logs[-1]["message"]
    assert followed[-2:] == logs and "started" in followed[0]["message"]
    model_id = job["result"]["model_id"]
    assert model_id in [m["id"] for m in models] and "torch" in info["versions"]
    with Client(running_service.url, api_key=SERVICE_KEY) as same:
        assert same.job(job) == job  # the same operation, run by the other driver
        np.testing.assert_array_equal(
            gists, same.gist(tiny_documents(1, seed=5)[0], model_id=model_id)
        )


def test_async_client_raises_the_servers_errors_and_a_failed_wait(running_service):
    async def errors():
        async with AsyncClient(running_service.url, api_key=SERVICE_KEY) as gn:
            with pytest.raises(APIError) as refused:
                await gn.train(999_999)
            assert refused.value.status_code == 404
            assert "dataset 999999 does not exist" in str(refused.value)
            with pytest.raises(APIError) as missing:
                [event async for event in gn.events(999_999)]
            assert missing.value.status_code == 404
            prepared = await gn.create_dataset(dataset_body(sample_teacher(), tiny_documents(6)))
            await gn.wait(prepared, timeout=180)
            started = await gn.train(prepared["dataset_id"], max_steps=100_000, batch_size=8)
            await gn.cancel(started)
            with pytest.raises(JobFailed) as stopped:
                await gn.wait(started, timeout=60)
            assert stopped.value.job["status"] == "cancelled"
        async with AsyncClient(running_service.url, api_key="wrong") as locked:
            with pytest.raises(APIError) as denied:
                await locked.datasets()
            assert denied.value.status_code == 401
        async with AsyncClient("http://127.0.0.1:9", api_key=SERVICE_KEY, timeout=2) as gone:
            with pytest.raises(ServerUnreachable):
                await gone.jobs()

    asyncio.run(errors())
