"""List endpoints cost a fixed number of queries, however many rows a page holds."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import delete, event

from service.db.engine import session_scope
from service.db.models import Dataset, Evaluation, Job, Model
from service.queue import QUEUE_OF_KIND, JobKind, JobStatus, ProductStatus


def add_finished_jobs(session, *, count: int) -> None:
    """`count` finished jobs in a new dataset: a third prepare, train (each with its model)
    and evaluate (each with its evaluation of the first model)."""
    dataset = Dataset(name="counted", config={}, status=ProductStatus.READY)
    session.add(dataset)
    session.flush()
    first_model = None
    for i in range(count):
        kind = (JobKind.PREPARE, JobKind.TRAIN, JobKind.EVALUATE)[i % 3]
        job = Job(
            kind=kind, queue=QUEUE_OF_KIND[kind], status=JobStatus.SUCCEEDED, dataset_id=dataset.id
        )
        session.add(job)
        session.flush()
        if kind == JobKind.TRAIN:
            model = Model(
                job_id=job.id,
                dataset_id=dataset.id,
                split="train",
                checkpoint_path=f"jobs/{job.id}/gistnet.pt",
                model_config={},
                training_config={},
                teacher="t",
                tokenizer="t",
                block_size=32,
                hidden_size=64,
                steps=1,
            )
            session.add(model)
            session.flush()
            first_model = first_model or model
        elif kind == JobKind.EVALUATE and first_model is not None:
            session.add(
                Evaluation(
                    job_id=job.id, model_id=first_model.id, dataset_id=dataset.id, split="val"
                )
            )


@pytest.fixture(autouse=True)
def _remove_counted_rows(api_stack):
    """The rows made here go afterwards (their jobs, models and evaluations with the
    dataset): their models, newer than the session's trained one and without checkpoints,
    would otherwise become what /gist serves by default in later tests."""
    yield
    with session_scope(api_stack.settings.database_url) as session:
        session.execute(delete(Dataset).where(Dataset.name == "counted"))


@contextmanager
def counted_queries(client):
    engine = client.app.state.sessionmaker.kw["bind"]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_):
        if not statement.startswith("BEGIN"):  # SQLite's explicit transaction start
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_listing_50_jobs_costs_the_same_queries_as_listing_5(client, api_stack):
    with session_scope(api_stack.settings.database_url) as session:
        add_finished_jobs(session, count=60)

    with counted_queries(client) as few:
        page = client.get("/jobs", params={"limit": 5})
    assert page.status_code == 200 and len(page.json()["data"]) == 5
    with counted_queries(client) as many:
        page = client.get("/jobs", params={"limit": 50})
    assert page.status_code == 200 and len(page.json()["data"]) == 50

    results = [job["result"] for job in page.json()["data"]]
    assert any(r.get("model_id") for r in results) and any(r.get("evaluation_id") for r in results)
    # count, page, models of the page, evaluations of the page
    assert len(many) == len(few) <= 4, many


def test_listing_datasets_and_evaluations_does_not_query_per_row(client, api_stack):
    with session_scope(api_stack.settings.database_url) as session:
        add_finished_jobs(session, count=30)
    for route in ("/datasets", "/evaluations"):
        with counted_queries(client) as few:
            assert client.get(route, params={"limit": 1}).status_code == 200
        with counted_queries(client) as many:
            body = client.get(route, params={"limit": 50}).json()
        assert body["count"] > 1
        assert len(many) == len(few) <= 3, (route, many)
