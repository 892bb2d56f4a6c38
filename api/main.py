"""The FastAPI app. `create_app()` builds it from the settings; its lifespan opens the
database, the broker connection, the gist engines and the batching queue, and closes them.

Run it with `gistnet serve`, or `uvicorn --factory api.main:create_app`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import sessionmaker

from api.batching import GistBatcher
from api.engine import EngineCache
from api.metrics import ApiMetrics, RequestMetricsMiddleware
from api.routes import include_routers
from api.validation import RequestProblem
from gistnet.config import describe_validation_errors
from service.db.engine import make_engine
from service.queue import celery_client
from service.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    engine = make_engine(settings.database_url)
    app.state.sessionmaker = sessionmaker(engine, expire_on_commit=False)
    app.state.celery = celery_client(settings)
    app.state.engines = EngineCache(
        device=settings.device,
        capacity=settings.gist_model_cache,
        max_batch=settings.gist_max_batch,
    )
    app.state.batcher = GistBatcher(
        max_batch=settings.gist_max_batch,
        max_wait_s=settings.gist_batch_wait_ms / 1000,
        capacity=settings.gist_queue_size,
        on_forward=app.state.metrics.gist_batch_blocks.observe,
    )
    await app.state.batcher.start()
    try:
        yield
    finally:
        await app.state.batcher.stop()
        app.state.engines.clear()
        app.state.celery.close()
        engine.dispose()


def _describe(errors) -> str:
    # A request's locations start with where the value came from (body, query, path).
    return "; ".join(
        describe_validation_errors(
            errors, name_of=lambda loc: ".".join(str(p) for p in loc if p != "body")
        )
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="GistNet Platform",
        summary="Prepare datasets, train GistNet, and turn token blocks into gist vectors.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.metrics = ApiMetrics()
    app.state.metrics.watch(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    include_routers(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError):
        return JSONResponse(
            status_code=422,
            content={
                "detail": _describe(exc.errors()),
                "errors": [
                    {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                    for e in exc.errors()
                ],
            },
        )

    @app.exception_handler(RequestProblem)
    async def _request_problem(_request: Request, exc: RequestProblem):
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    return app
