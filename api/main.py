"""The FastAPI app. `create_app()` builds it from the settings; its lifespan opens the
database, the broker connection, the gist engines and the batching queue, and closes them.

Run it with `gistnet serve`, or `uvicorn --factory api.main:create_app`.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import sessionmaker

from api.batching import ContextLane, GistBatcher, RefineLane
from api.engine import EngineCache
from api.errors import OPENAI_PREFIX, ContainErrors, LimitBodySize, install_error_handlers
from api.metrics import ApiMetrics, RequestMetricsMiddleware
from api.routes import include_routers
from api.uploads import arrival_root, sweep_orphaned_uploads
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
    # Uploads a stopped API left half-received.
    await run_in_threadpool(sweep_orphaned_uploads, arrival_root(settings))
    app.state.engines = EngineCache(
        device=settings.device,
        capacity=settings.gist_model_cache,
        max_batch=settings.gist_max_batch,
        bounds=settings.model_bounds,
    )
    app.state.batcher = GistBatcher(
        max_batch=settings.gist_max_batch,
        max_wait_s=settings.gist_batch_wait_ms / 1000,
        capacity=settings.gist_queue_size,
        on_forward=app.state.metrics.observe_forward,
    )
    await app.state.batcher.start()
    app.state.refine_lane = RefineLane(capacity=settings.gist_refine_queue)
    await app.state.refine_lane.start()
    app.state.context_lane = ContextLane(capacity=settings.context_queue)
    await app.state.context_lane.start()
    try:
        yield
    finally:
        await app.state.context_lane.stop()
        await app.state.refine_lane.stop()
        await app.state.batcher.stop()
        app.state.engines.clear()
        app.state.celery.close()
        engine.dispose()


# The routes whose bodies carry contexts and documents.
CONTEXT_ROUTES = ("/score", "/generate", "/memories")


def body_limit_of(settings: Settings):
    """Each route's largest body: inline documents on POST /datasets (files, streamed to
    disk, have their own bound), a text or blocks on POST /gist (and its OpenAI form,
    POST /v1/embeddings), a context of long documents on POST /score, /generate and
    /memories, a small JSON document anywhere else."""
    from api.uploads import MAX_FIELD_BYTES

    def limit_of(path: str, content_type: str) -> tuple[int, str]:
        path = path.rstrip("/")
        if path == "/datasets" and content_type.startswith("multipart/form-data"):
            # The upload counts its files itself; here only what it never could exceed.
            return settings.upload_max_bytes + MAX_FIELD_BYTES, "GISTNET_UPLOAD_MAX_BYTES"
        if path == "/datasets":
            return settings.dataset_max_body_bytes, "GISTNET_DATASET_MAX_BODY_BYTES"
        if path in ("/gist", "/v1/embeddings"):
            return settings.gist_max_body_bytes, "GISTNET_GIST_MAX_BODY_BYTES"
        if path in CONTEXT_ROUTES:
            return settings.context_max_body_bytes, "GISTNET_CONTEXT_MAX_BODY_BYTES"
        return settings.max_body_bytes, "GISTNET_MAX_BODY_BYTES"

    return limit_of


def _openapi_of(app: FastAPI):
    """The schema FastAPI builds, less the 422 it declares on every route with a body:
    the OpenAI-compatible routes answer 400 for an invalid request instead."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema["paths"].items():
                if path.startswith(OPENAI_PREFIX):
                    for operation in operations.values():
                        operation["responses"].pop("422", None)
            if "#/components/schemas/HTTPValidationError" not in json.dumps(schema["paths"]):
                for unused in ("HTTPValidationError", "ValidationError"):
                    schema["components"]["schemas"].pop(unused, None)
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="GistNet Platform",
        summary="Prepare datasets, train GistNet, and turn token blocks into gist vectors.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings = settings or get_settings()
    app.state.metrics = ApiMetrics()
    app.state.metrics.watch(app)
    include_routers(app)
    app.openapi = _openapi_of(app)
    install_error_handlers(app)
    # The last added runs first: errors are contained around everything (the metrics
    # included, which count a 500 as it passes), then every request is counted, and
    # bodies are counted before any route reads them.
    app.add_middleware(LimitBodySize, limit_of=body_limit_of(settings))
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(ContainErrors)
    return app
