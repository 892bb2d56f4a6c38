"""Every dependency the routes take, as an Annotated alias.

The ones that only read app state are `async def`: FastAPI runs a plain `def` dependency in
a thread pool, a hand-off that costs more than the work on the /gist hot path.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from api.batching import GistBatcher
from api.engine import EngineCache
from service.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_engines(request: Request) -> EngineCache:
    return request.app.state.engines


async def get_batcher(request: Request) -> GistBatcher:
    return request.app.state.batcher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
EnginesDep = Annotated[EngineCache, Depends(get_engines)]
BatcherDep = Annotated[GistBatcher, Depends(get_batcher)]


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With GISTNET_API_KEY set, the request must carry `Authorization: Bearer <key>`."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    # compare_digest takes the same time wherever the first difference is.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


AuthDep = Depends(require_api_key)
