"""Engines and sessions, one engine per database URL and process.

A Celery prefork child inherits its parent's objects; a pooled connection shared across a
fork corrupts both sides, so the cache is keyed by the process id as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_ENGINES: dict[tuple[str, int], tuple[Engine, sessionmaker[Session]]] = {}


def ensure_sqlite_folder(url: str) -> None:
    """sqlite:///var/x.sqlite needs var/ to exist before the first connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    # SQLite lets one writer in at a time. Taking the write lock when a transaction begins
    # (BEGIN IMMEDIATE) makes a second writer wait up to busy_timeout, instead of failing at
    # once when a read transaction tries to turn into a write one. WAL lets readers go on.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def get_engine(url: str) -> Engine:
    return _sessionmaker_entry(url)[0]


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return _sessionmaker_entry(url)[1]


def _sessionmaker_entry(url: str) -> tuple[Engine, sessionmaker[Session]]:
    key = (url, os.getpid())
    if key not in _ENGINES:
        engine = make_engine(url)
        _ENGINES[key] = (engine, sessionmaker(engine, expire_on_commit=False))
    return _ENGINES[key]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with get_sessionmaker(url)() as session, session.begin():
        yield session


def dispose_engines() -> None:
    """Close this process's engines. Entries inherited through a fork are left alone (and
    kept referenced): closing them would close the parent's connections too."""
    for key in [k for k in _ENGINES if k[1] == os.getpid()]:
        engine, _ = _ENGINES.pop(key)
        engine.dispose()
