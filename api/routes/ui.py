"""The dashboard: plain HTML and JavaScript from api/static/, served at /ui/, with / leading
there. The files hold no data and are public like a login page; every number on the pages
comes from the JSON routes, which want the API key when one is set."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/")


def mount_dashboard(app: FastAPI) -> None:
    app.include_router(router)
    # html=True: /ui/ answers with index.html.
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
