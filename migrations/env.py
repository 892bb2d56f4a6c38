"""Alembic environment: the URL comes from the settings, the target from the models.

`gistnet db upgrade` passes the URL in `config.attributes["database_url"]`; the alembic
command line falls back to GISTNET_DATABASE_URL.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.db.engine import make_engine
from service.db.models import Base
from service.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or get_settings().database_url


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                # Batch mode copies a table and drops the old one; with foreign keys on, the
                # drop would cascade into every row that refers to it (a job's curve, model,
                # evaluation). SQLite honours this pragma only outside a transaction, so it
                # goes straight to the driver before the migration's transaction begins.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
