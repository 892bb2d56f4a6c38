"""Databases for the service-layer tests: a migrated SQLite file and a migrated PostgreSQL
database, so every database function is exercised on both backends."""

from __future__ import annotations

import pytest

from service.db.migrate import upgrade_database
from tests.service_stack import postgres_database


@pytest.fixture(scope="session")
def postgres_url():
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A freshly migrated database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/records.sqlite"
    else:
        url = request.getfixturevalue("postgres_url")
        from sqlalchemy import text

        from service.db.engine import get_engine

        with get_engine(url).begin() as connection:  # empty it between tests
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade_database(url)
    return url
