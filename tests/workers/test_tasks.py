"""workers/tasks.py in this process: the progress callback a preparation reports through,
an import run by its task (copied, recorded ready) and the ways it fails, on an embedded
stack (SQLite database and broker) with no worker listening. The flows across processes,
and a dataset prepared in parts step by step, are in the test_workers_*.py files."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import yaml

from gistnet.data import PrepProgress
from service.db.engine import session_scope
from service.db.jobs import claim_job
from service.db.models import Dataset, Job, utcnow
from service.db.records import create_dataset
from service.queue import TASK_OF_KIND, JobKind
from tests.seed_layout import write_seed_dataset
from tests.service_stack import REDIS_DB, stack_of_kind
from workers.runner import JobRun, worker_name
from workers.tasks import _prep_progress
from workers.training import _finite

pytestmark = [pytest.mark.services]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """(settings, tasks): an embedded stack and the worker's tasks bound to its app."""
    from workers.celery_app import create_celery_app

    root = tmp_path_factory.mktemp("tasks")
    with stack_of_kind("embedded", root, redis_db=REDIS_DB["workers"]) as stack:
        app = create_celery_app(stack.settings)
        app.loader.import_default_modules()  # what a worker does at start: registers the tasks
        yield stack.settings, {kind: app.tasks[TASK_OF_KIND[kind]] for kind in JobKind}


@pytest.fixture(scope="module")
def seed_folder(embedded, small_dataset):
    """small_dataset in the seed's layout under the data root: what an import reads."""
    settings, _ = embedded
    write_seed_dataset(small_dataset, settings.data_root / "seed" / "small", limit=40)
    return "seed/small"


def _queued_dataset(settings, config: dict) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        dataset, job = create_dataset(session, name=config["dataset_name"], config=config)
        return dataset.id, job.id


def _import_config(teacher: str, path: str) -> dict:
    # What POST /datasets/import records.
    return {
        "dataset_name": "imported",
        "tokenizer": teacher,
        "teacher_model": teacher,
        "import": {"path": path},
    }


def test_the_progress_callback_records_the_counts_and_the_shard_of_a_part(embedded, teacher):
    settings, _ = embedded
    _, job_id = _queued_dataset(settings, _import_config(teacher, "seed/small"))
    with session_scope(settings.database_url) as session:
        job = claim_job(
            session,
            job_id=job_id,
            worker=worker_name(),
            device="cpu",
            stale_before=utcnow() - timedelta(seconds=60),
            max_attempts=3,
        )
        run = JobRun(settings=settings, job=job)
    on_progress = _prep_progress(run, shard="train-00001-of-00002.arrow")
    on_progress(PrepProgress("train", documents=3, tokens=200, examples=5, part=1))
    on_progress(PrepProgress("train", documents=7, tokens=480, examples=12, part=1))
    run.flush()
    with session_scope(settings.database_url) as session:
        progress = session.get(Job, job_id).progress
    assert progress == {
        "split": "train",
        "shard": "train-00001-of-00002.arrow",
        "documents": 7,
        "tokens": 480,
        "examples": 12,
    }


def test_an_import_task_copies_the_shards_and_records_the_dataset_ready(
    embedded, teacher, seed_folder
):
    settings, tasks = embedded
    dataset_id, job_id = _queued_dataset(settings, _import_config(teacher, seed_folder))
    assert tasks[JobKind.PREPARE](job_id) == "succeeded"
    with session_scope(settings.database_url) as session:
        dataset = session.get(Dataset, dataset_id)
        status, path, info = dataset.status, dataset.path, dataset.info
    assert (status, path) == ("ready", f"datasets/{dataset_id}")
    assert info["splits"]["train"]["examples"] == 40 and info["imported_from"]["path"] == seed_folder
    folder = settings.artifact_path(path)
    written = yaml.safe_load((folder / "metadata.yaml").read_text())
    assert written["fingerprint"] == info["fingerprint"]
    for split in info["splits"].values():  # every shard the metadata names is there
        assert (folder / split["path"]).is_file()
    # Run again (a redelivered message): the finished job is left as it is.
    assert tasks[JobKind.PREPARE](job_id) == "skipped"


def test_an_import_whose_folder_is_gone_fails_naming_it(embedded, teacher):
    settings, tasks = embedded
    dataset_id, job_id = _queued_dataset(settings, _import_config(teacher, "seed/removed"))
    assert tasks[JobKind.PREPARE](job_id) == "failed"
    with session_scope(settings.database_url) as session:
        job, dataset = session.get(Job, job_id), session.get(Dataset, dataset_id)
        assert (job.status, dataset.status) == ("failed", "failed")
        assert job.error_type == "ShardError" and "seed/removed" in job.error, job.error
        assert not (settings.artifact_path(f"datasets/{dataset_id}") / "metadata.yaml").exists()


def test_an_import_of_damaged_shards_fails_and_leaves_no_metadata(embedded, teacher, seed_folder):
    settings, tasks = embedded
    damaged = settings.data_root / "seed" / "damaged"
    damaged.mkdir()
    (damaged / "metadata.yaml").write_text(
        (settings.data_root / seed_folder / "metadata.yaml").read_text()
    )
    for name in ("train.arrow", "validation.arrow"):
        (damaged / name).write_bytes(b"not an arrow file")
    dataset_id, job_id = _queued_dataset(settings, _import_config(teacher, "seed/damaged"))
    assert tasks[JobKind.PREPARE](job_id) == "failed"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.error_type == "ShardError" and "train.arrow" in job.error, job.error
    assert not (settings.artifact_path(f"datasets/{dataset_id}") / "metadata.yaml").exists()


def test_a_loss_that_is_not_a_number_is_recorded_as_none():
    assert _finite(float("nan")) is None and _finite(math.inf) is None
    assert _finite(None) is None and _finite(0.25) == 0.25
