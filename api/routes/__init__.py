"""All routers, in one place. Every one but health's (and the dashboard's static files,
which hold no data) sits behind the API key.

The app includes them directly (no intermediate router): each level of nesting is one
more round of route matching on every request.
"""

from fastapi import APIRouter, FastAPI

from api.deps import AuthDep
from api.errors import error_responses
from api.openai_schemas import OpenAIErrorPublic
from api.routes import (
    datasets,
    evaluations,
    generate,
    gist,
    health,
    imports,
    info,
    jobs,
    memories,
    metrics,
    models,
    openai_compat,
    score,
    train,
    ui,
)

GUARDED: list[APIRouter] = [
    info.router,
    gist.router,
    score.router,
    generate.router,
    memories.router,
    jobs.router,
    imports.router,
    datasets.router,
    train.router,
    models.router,
    evaluations.router,
    metrics.router,
]


def include_routers(app: FastAPI) -> None:
    app.include_router(health.router)
    for router in GUARDED:
        app.include_router(router, dependencies=[AuthDep], responses=error_responses(401))
    app.include_router(
        openai_compat.router,
        dependencies=[AuthDep],
        responses=error_responses(401, model=OpenAIErrorPublic),
    )
    ui.mount_dashboard(app)
