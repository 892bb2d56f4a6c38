"""Every error the API answers has one shape (`ErrorPublic`), and no error breaks a connection.

- Request validation, `RequestProblem`s and `HTTPException`s answer `{detail, errors}`;
  under /v1/ (the OpenAI-compatible routes) they answer OpenAI's shape instead,
  `{error: {message, type, param, code}}`, and a request that fails validation is 400
  there, as it is on OpenAI's API, so that OpenAI's clients raise what they would.
- A database that is briefly away (restarting, refusing connections) answers 503 with
  `Retry-After`, not 500: the client should simply try again.
- Anything unforeseen answers a JSON 500 from `ContainErrors`, which does not re-raise:
  Starlette's own error middleware re-raises after answering, and uvicorn then closes the
  connection, so the client's next request on it was reset.
- `LimitBodySize` refuses a body larger than its route takes before reading it in full.

`error_responses(...)` declares these bodies in the OpenAPI schema, route by route.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.openai_schemas import OpenAIError, OpenAIErrorPublic
from api.schemas import ErrorPublic
from api.validation import RequestProblem
from gistnet.config import describe_validation_errors

log = logging.getLogger(__name__)

# Long enough for a database restart (seconds), short enough not to idle.
DATABASE_RETRY_AFTER_S = 3

_WHAT = {
    400: "the body is not JSON text (under /v1/: any invalid request, as on OpenAI's API)",
    401: "missing or wrong API key",
    404: "no such record",
    409: "the record is not in a state that allows it",
    413: "the request is larger than this route takes",
    422: "a value is invalid; `detail` names the field",
    429: "the gist queue is full; retry after `Retry-After` seconds",
    503: "a dependency (database, broker, model) is unavailable; retry after `Retry-After`",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


# The routes that speak OpenAI's API, errors included.
OPENAI_PREFIX = "/v1/"


def error_responses(*codes: int, model: type = ErrorPublic) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error statuses a route answers, all with one model."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        declared[code] = {"model": model, "description": _WHAT[code]}
        if code in (429, 503):
            declared[code]["headers"] = _RETRY_AFTER
    return declared


class ErrorResponse(JSONResponse):
    """ASCII-only JSON: an error may quote what the client sent, whatever it was."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _openai_type(status_code: int) -> str:
    if status_code == 429:
        return "rate_limit_error"
    return "server_error" if status_code >= 500 else "invalid_request_error"


def error_response(
    status_code: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> ErrorResponse:
    if path.startswith(OPENAI_PREFIX):
        if status_code == 422:
            status_code = 400
        # The top-level field of the first problem: the parameter, as OpenAI names it.
        loc = errors[0]["loc"] if errors else ()
        fields = [p for p in loc if p not in ("body", "query", "path")]
        param = str(fields[0]) if fields else None
        body = OpenAIErrorPublic(
            error=OpenAIError(
                message=detail,
                type=_openai_type(status_code),
                param=param,
                code="invalid_api_key" if status_code == 401 else None,
            )
        )
    else:
        body = ErrorPublic(detail=detail, errors=errors or [])
    return ErrorResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _where(loc) -> str:
    # A request's locations start with where the value came from (body, query, path, header).
    if len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
        return f"body (at character {loc[1]})"  # JSON that does not parse
    return ".".join(str(p) for p in loc if p not in ("body", "query", "path", "header"))


def _too_deep(path: str) -> ErrorResponse:
    # FastAPI answers 400 "error parsing the body" to a JSON body nested past the parser's
    # depth (Python's recursion limit): a value no route takes, and it can say so.
    return error_response(
        422,
        f"body: JSON nested more than {sys.getrecursionlimit()} levels deep; no field of "
        f"a request holds more than a few levels of lists or objects",
        path=path,
    )


def _is_database_away(err: sa_exc.DBAPIError) -> bool:
    return isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError) or bool(
        err.connection_invalidated
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return error_response(
            422,
            "; ".join(describe_validation_errors(errors, name_of=_where)),
            errors=[
                {
                    "loc": list(e.get("loc", ())),
                    "msg": str(e.get("msg")),
                    "type": str(e.get("type")),
                }
                for e in errors
            ],
            path=request.url.path,
        )

    @app.exception_handler(RequestProblem)
    async def _request_problem(request: Request, exc: RequestProblem):
        return error_response(exc.status_code, str(exc), path=request.url.path)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            return _too_deep(request.url.path)
        return error_response(
            exc.status_code, str(exc.detail), headers=exc.headers, path=request.url.path
        )

    @app.exception_handler(sa_exc.DBAPIError)
    async def _database_error(request: Request, exc: sa_exc.DBAPIError):
        if _is_database_away(exc):
            log.warning("database unavailable: %s", exc.orig)
            return error_response(
                503,
                f"the database is unavailable ({type(exc.orig).__name__}); retry in a few seconds",
                headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
                path=request.url.path,
            )
        if isinstance(exc, sa_exc.DataError):
            # Checks come first; this is the backstop for a value they did not foresee.
            log.warning("database refused a value: %s", exc.orig)
            return error_response(
                422, f"a value does not fit the database: {exc.orig}", path=request.url.path
            )
        raise exc

    @app.exception_handler(sa_exc.TimeoutError)
    async def _pool_exhausted(request: Request, _exc: sa_exc.TimeoutError):
        return error_response(
            503,
            "every database connection is busy; retry in a few seconds",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
            path=request.url.path,
        )


class ContainErrors:
    """The last line: an unforeseen exception answers a JSON 500 (logged), and goes no
    further, so the server keeps the connection open for the client's next request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                # Half an answer is out: only closing the connection can tell the client.
                raise
            response = error_response(
                500,
                f"internal error ({type(exc).__name__}); it has been logged",
                path=scope.get("path", ""),
            )
            await response(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes an HTTPException on as it is."""


class LimitBodySize:
    """Refuse a request body larger than its route takes: at once when `Content-Length`
    says so, else as soon as the bytes streamed in pass the limit. Nothing beyond the
    limit is ever held in memory."""

    def __init__(self, app: ASGIApp, *, limit_of: Callable[[str, str], tuple[int, str]]):
        self.app = app
        # (path, content type) -> (bytes, the setting that sets it)
        self.limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit, setting = self.limit_of(scope["path"], content_type)
        message = (
            f"the request body is larger than {limit} bytes, the most "
            f"{scope['method']} {scope['path']} takes ({setting}): send less per request"
        )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, message, path=scope["path"])(scope, receive, send)
            return
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(413, message)
            return incoming

        async def send_noting_start(outgoing: Message) -> None:
            nonlocal started
            started = started or outgoing["type"] == "http.response.start"
            await send(outgoing)

        try:
            await self.app(scope, counting_receive, send_noting_start)
        except BodyTooLarge as err:
            if started:
                raise
            # Read outside a route (a middleware, a dependency): answered here instead.
            await error_response(413, str(err.detail), path=scope["path"])(
                scope, receive, send
            )
