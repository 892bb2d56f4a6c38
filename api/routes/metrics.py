"""GET /metrics: the API's Prometheus metrics (see api/metrics.py), behind the API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.errors import error_responses

router = APIRouter(tags=["metrics"])


# 503: the job counts come from the database, which may be away.
@router.get("/metrics", response_class=Response, responses=error_responses(503))
def metrics(request: Request) -> Response:
    """Request counts and latencies by route, /gist batch sizes, the queue, loaded models
    and jobs by kind and state, in Prometheus's text format."""
    # A plain def: collecting counts the jobs in the database, off the event loop.
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
