"""GET /info: what this API process runs (versions, device, loaded models) and the limits it
holds requests to, so a client or an operator reads them instead of guessing."""

from __future__ import annotations

import platform
from importlib.metadata import version

from fastapi import APIRouter

import gistnet
from api.deps import EnginesDep, SettingsDep
from api.schemas import InfoPublic, VersionsPublic
from gistnet.devices import resolve_device

router = APIRouter(tags=["health"])


def _versions() -> VersionsPublic:
    return VersionsPublic(
        gistnet=gistnet.__version__,
        torch=version("torch"),
        transformers=version("transformers"),
        python=platform.python_version(),
    )


@router.get("/info", response_model=InfoPublic)
def info(settings: SettingsDep, engines: EnginesDep) -> InfoPublic:
    return InfoPublic(
        versions=_versions(),
        device=str(resolve_device(settings.device)),
        models_loaded=engines.loaded(),
        limits=settings.request_limits,
        max_body_bytes={
            "POST /datasets": settings.dataset_max_body_bytes,
            "POST /gist": settings.gist_max_body_bytes,
            "other": settings.max_body_bytes,
        },
        worker_memory_bytes=settings.worker_memory,
    )
