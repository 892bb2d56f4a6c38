"""The workers' Celery app, built from the settings and nothing else.

`gistnet worker` builds it with `create_celery_app(get_settings())`; `celery -A
workers.celery_app worker` finds the same app as the module attribute `app`. Broker,
queues and routes come from `service.queue`, which the API sends through as well.
"""

from __future__ import annotations

from service.queue import GistNetCelery, celery_client, is_sql_broker
from service.settings import Settings, get_settings

TASK_MODULES = ["workers.tasks", "workers.recovery"]


def create_celery_app(settings: Settings) -> GistNetCelery:
    app = celery_client(settings, include=TASK_MODULES)
    app.conf.update(
        # Crash safety: a message is acknowledged only after its task returns, and comes
        # back if the process running it dies; a worker holds one message at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        # Remote control and events need a fanout exchange, which the SQL broker lacks.
        worker_enable_remote_control=not is_sql_broker(settings.broker_url),
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


_default_app: GistNetCelery | None = None


def __getattr__(name: str) -> GistNetCelery:
    # Built on first use, so importing this module reads no environment.
    global _default_app
    if name not in ("app", "celery"):
        raise AttributeError(name)
    if _default_app is None:
        _default_app = create_celery_app(get_settings())
    return _default_app
