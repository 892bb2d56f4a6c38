"""The schema comes from the Alembic revisions alone, and they match the models."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from service.db.engine import make_engine
from service.db.migrate import (
    alembic_config,
    current_revision,
    downgrade_database,
    upgrade_database,
)
from service.db.models import Base
from tests.service_stack import REPO, subprocess_env

TABLES = {
    "datasets",
    "jobs",
    "models",
    "job_metrics",
    "evaluations",
    "idempotency_keys",
    "memories",
}
# The newest revision, whatever its number: revisions are added over time.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_revisions_build_exactly_the_schema_the_models_describe(database_url):
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
            )
            assert differences == []
            assert TABLES <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_downgrade_removes_the_schema_and_upgrade_restores_it(database_url):
    downgrade_database(database_url, "base")
    assert current_revision(database_url) is None
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert not TABLES & set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    upgrade_database(database_url)
    assert current_revision(database_url) == HEAD


def test_gistnet_db_upgrade_migrates_the_configured_database(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh/records.sqlite"
    env = subprocess_env({"GISTNET_DATABASE_URL": url})
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "db", "upgrade"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"database at revision {HEAD}" in done.stdout
    assert current_revision(url) == HEAD


def test_upgrade_to_0002_keeps_every_row_and_marks_old_jobs_sent_once(database_url):
    """0002 only adds columns: on SQLite, copying the jobs table instead would cascade into
    the rows that refer to it. A job from before counts as sent once, when it was made."""
    from sqlalchemy import text

    downgrade_database(database_url, "0001")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO datasets (id, name, status, config, created_at, updated_at) "
                    "VALUES (1, 'd', 'ready', '{}', :now, :now)"
                ),
                {"now": "2025-01-01 00:00:00"},
            )
            for job_id, status in ((1, "succeeded"), (2, "queued")):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, kind, queue, status, dataset_id, params, attempt, "
                        "cancel_requested, created_at) VALUES (:id, 'train', 'train', :status, 1, "
                        "'{}', 1, false, :now)"
                    ),
                    {"id": job_id, "status": status, "now": "2025-01-01 00:00:00"},
                )
            connection.execute(
                text(
                    "INSERT INTO job_metrics (job_id, step, loss, attempt, recorded_at) "
                    "VALUES (1, 1, 0.5, 1, :now)"
                ),
                {"now": "2025-01-01 00:00:00"},
            )
        upgrade_database(database_url)
        with engine.connect() as connection:
            jobs = connection.execute(
                text("SELECT id, sends, sent_at IS NOT NULL FROM jobs ORDER BY id")
            ).all()
            assert [tuple(row) for row in jobs] == [(1, 1, True), (2, 1, True)]
            assert connection.execute(text("SELECT count(*) FROM job_metrics")).scalar() == 1
    finally:
        engine.dispose()
