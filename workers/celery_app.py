"""The Celery app, built from the settings and nothing else.

`gistnet worker` builds it with `create_celery_app(get_settings())`; `celery -A
workers.celery_app worker` finds the same app as the module attribute `app`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from service.db.engine import ensure_sqlite_folder
from service.settings import Settings, get_settings

QUEUES = ("prep", "train")
TASK_ROUTES = {
    "gistnet.prepare_dataset": {"queue": "prep"},
    "gistnet.train": {"queue": "train"},
    # Evaluation runs the teacher over every example: it belongs on the GPU workers.
    "gistnet.evaluate": {"queue": "train"},
}


class GistNetCelery(Celery):
    """A Celery app that carries the settings it was built from, for its tasks to read."""

    def __init__(self, settings: Settings, **kwargs: Any):
        super().__init__("gistnet", **kwargs)
        self.settings = settings


def is_sql_broker(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def _transport_options(settings: Settings) -> dict[str, Any]:
    if is_sql_broker(settings.broker_url):
        # Every option here goes to sqlalchemy.create_engine; there is no visibility timeout
        # (a delivered message stays hidden for good), which is why recovery uses heartbeats.
        if "sqlite" in settings.broker_url:
            return {"connect_args": {"timeout": 30}}
        return {}
    # Redis/SQS hand an unacknowledged message to another worker after this long.
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def create_celery_app(settings: Settings) -> GistNetCelery:
    if is_sql_broker(settings.broker_url):
        ensure_sqlite_folder(settings.broker_url.split("+", 1)[1])
    app = GistNetCelery(
        settings, broker=settings.broker_url, include=["workers.tasks", "workers.recovery"]
    )
    app.conf.update(
        # Job state lives in our database; Celery keeps no results.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        task_default_queue="prep",
        task_routes=TASK_ROUTES,
        # Crash safety: a message is acknowledged only after its task returns, and comes
        # back if the process running it dies; a worker holds one message at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
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
