"""GET /health (is the process up, which models are loaded) and GET /ready (can it work)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import AuthDep, BatcherDep, CeleryDep, EnginesDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(engines: EnginesDep, batcher: BatcherDep) -> HealthPublic:
    return HealthPublic(
        status="ok",
        models_loaded=engines.loaded(),
        gist_queue_blocks=batcher.waiting_blocks,
        gist_forwards=batcher.forwards,
        gist_blocks=batcher.blocks_done,
    )


def _check_database(session) -> str:
    session.execute(text("SELECT 1"))
    return "ok"


def _check_broker(celery) -> str:
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
        with connection.channel() as channel:
            # Declaring a queue makes every transport really talk to its server.
            channel.queue_declare(queue="prep", durable=True, auto_delete=False)
    return "ok"


def _check_artifacts(settings) -> str:
    # A missing folder or bucket, refused credentials, an unreachable endpoint: each named.
    settings.artifact_store().check()
    return "ok"


@router.get(
    "/ready",
    response_model=ReadyPublic,
    responses={
        **error_responses(401),
        503: {"model": ReadyPublic, "description": "what is not ready, named"},
    },
    dependencies=[AuthDep],
)
def ready(session: SessionDep, celery: CeleryDep, settings: SettingsDep):
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: _check_database(session)),
        ("broker", lambda: _check_broker(celery)),
        ("artifacts", lambda: _check_artifacts(settings)),
    ):
        try:
            checks[name] = check()
        except Exception as err:
            checks[name] = f"unavailable: {type(err).__name__}: {err}"
    ok = all(v == "ok" for v in checks.values())
    body = ReadyPublic(ready=ok, checks=checks)
    return body if ok else JSONResponse(status_code=503, content=body.model_dump())
