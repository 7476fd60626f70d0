"""Errors as RFC 9457 problem details: the app's own and the framework's alike."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
import sqlalchemy.exc
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_JSON = "application/problem+json"
_SECRET_SEGMENT = re.compile(r"(/api/webhooks/[^/]+/)[^/]+")
PROBLEM_BASE = "https://audience-sync.dev/problems/"
# Seconds a client is asked to wait while the database is unreachable: a restart or a failover
# takes a few seconds, and the pool reconnects by itself on the next request.
DATABASE_RETRY_AFTER = 5

log = structlog.get_logger(__name__)


class ProblemResponse(JSONResponse):
    """A JSON response served as application/problem+json."""

    media_type = PROBLEM_JSON


class AppError(Exception):
    """An expected failure; subclasses fix the status, title and problem type."""

    status_code: ClassVar[int] = 400
    title: ClassVar[str] = "Bad Request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class NotFound(AppError):
    """The resource does not exist, or belongs to another owner."""

    status_code = 404
    title = "Not Found"
    slug = "not-found"


class Conflict(AppError):
    """The request conflicts with the current state (e.g. a duplicate email)."""

    status_code = 409
    title = "Conflict"
    slug = "conflict"


class PreconditionFailed(AppError):
    """If-Match did not match the current version."""

    status_code = 412
    title = "Precondition Failed"
    slug = "precondition-failed"


class Unprocessable(AppError):
    """The body is well-formed but its content is invalid."""

    status_code = 422
    title = "Unprocessable Content"
    slug = "validation"


class Unauthorized(AppError):
    """No valid bearer token."""

    status_code = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """Authenticated, but not allowed."""

    status_code = 403
    title = "Forbidden"
    slug = "forbidden"


class TooManyRequests(AppError):
    """Rate-limited; the Retry-After header says when to come back."""

    status_code = 429
    title = "Too Many Requests"
    slug = "too-many-requests"


class MethodNotAllowed(AppError):
    """The path exists, the method does not; `Allow` lists the ones it answers."""

    status_code = 405
    title = "Method Not Allowed"
    slug = "method-not-allowed"

    def __init__(self, detail: str, *, allow: str) -> None:
        super().__init__(detail, headers={"Allow": allow})


class UnsupportedMediaType(AppError):
    """The body's Content-Type is not one this operation reads."""

    status_code = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class BadGateway(AppError):
    """The provider answered in a way we could not use."""

    status_code = 502
    title = "Bad Gateway"
    slug = "provider-error"


class ServiceUnavailable(AppError):
    """The provider is unreachable right now."""

    status_code = 503
    title = "Service Unavailable"
    slug = "unavailable"


def problem(
    request: Request,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """Build a problem+json response for `request`."""
    body: dict[str, Any] = {
        "type": type_ or "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description,
        "instance": request.url.path,
    }
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


async def _app_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, AppError)
    return problem(
        request,
        exc.status_code,
        title=exc.title,
        detail=exc.detail,
        type_=PROBLEM_BASE + exc.slug,
        extra=exc.extra,
        headers=exc.headers,
    )


# FastAPI's answer to a body it cannot even decode (not UTF-8, say): a 400 that no operation
# documents. Malformed JSON is already a 422; an undecodable body is the same kind of error.
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 400 and detail == _UNPARSABLE_BODY:
        return problem(
            request,
            422,
            title="Unprocessable Content",
            detail="The request body could not be parsed; send UTF-8 JSON.",
            type_=PROBLEM_BASE + "validation",
            extra={"errors": [{"field": "body", "message": "not parsable"}]},
        )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem(request, exc.status_code, detail=detail, headers=headers)


def _allowed_methods(request: Request) -> str:
    # Starlette's 405 names only the first route matching the path; GET and POST on one
    # path are two routes, and Allow must list every method the path answers. Asking each
    # route whether it fully matches per method uses only the public `matches` API.
    allowed = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.add(method)
    return ", ".join(sorted(allowed))


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "")


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_path(err.get("loc", ())), "message": err.get("msg", "invalid")}
        for err in exc.errors()
    ]
    return problem(
        request,
        422,
        title="Unprocessable Content",
        detail="The request is not valid; see 'errors' for each field.",
        type_=PROBLEM_BASE + "validation",
        extra={"errors": errors},
    )


def loggable_path(path: str) -> str:
    """The path with secrets cut out (webhook URLs carry their token)."""
    return _SECRET_SEGMENT.sub(r"\1[token]", path)


# Failures that mean "the database cannot be reached right now", not "this request is wrong":
# a refused or reset connection, a backend terminated by a shutdown or restart, a pool that
# has no connection to give within its timeout.
_DB_DOWN = (
    asyncpg.PostgresConnectionError,  # class 08, incl. the connection being gone
    asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    sqlalchemy.exc.TimeoutError,  # the pool's checkout timeout
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # the database host does not resolve
)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database is unreachable right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _DB_DOWN):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True
        if isinstance(current, OSError | TimeoutError) and _raised_by_driver(current):
            return True  # e.g. the unix socket of a stopped server is gone; a connect timeout
        current = current.__cause__ or current.__context__
    return False


def _raised_by_driver(exc: BaseException) -> bool:
    # Any OSError is too broad on its own; one raised while the driver or the pool was
    # connecting is the database being unreachable.
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg.", "sqlalchemy.pool", "sqlalchemy.dialects.postgresql")):
            return True
        tb = tb.tb_next
    return False


def _database_unavailable(request: Request, exc: BaseException) -> ProblemResponse:
    # One line, no traceback: during an outage every request fails the same known way.
    log.warning(
        "http.database_unavailable",
        path=loggable_path(request.url.path),
        error_type=type(exc).__name__,
    )
    return problem(
        request,
        503,
        title="Service Unavailable",
        detail="The database is unreachable right now; retry shortly.",
        type_=PROBLEM_BASE + "database-unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def _internal_error(request: Request, exc: BaseException) -> ProblemResponse:
    log.error(
        "http.unhandled_error",
        path=loggable_path(request.url.path),
        error_type=type(exc).__name__,
        exc_info=exc,
    )
    return problem(
        request,
        500,
        title="Internal Server Error",
        detail="Something went wrong on our side. The request id identifies it in our logs.",
    )


class UnhandledErrorMiddleware:
    """Answer an exception that escaped the routes, and do not re-raise it.

    Starlette's own last resort (ServerErrorMiddleware) re-raises after it has answered, so
    uvicorn closes the keep-alive connection and a client's next request on it gets nothing.
    Here a 500 is an ordinary response, and an unreachable database a 503 with Retry-After.
    It sits inside the request-id middleware, which adds X-Request-ID to the answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half a response is out: only closing the connection says it failed
            request = Request(scope, receive)
            if database_unavailable(exc):
                response = _database_unavailable(request, exc)
            else:
                response = _internal_error(request, exc)
            await response(scope, receive, send)


async def _unhandled(request: Request, exc: Exception) -> ProblemResponse:
    # The traceback goes to the log with the request id; the client learns nothing inside.
    # This handler runs outside every middleware (Starlette's ServerErrorMiddleware), so the
    # request id is neither bound to the log context nor added to the headers by them.
    request_id = getattr(request.state, "request_id", None)
    log.exception(
        "http.unhandled_error",
        path=loggable_path(request.url.path),
        error_type=type(exc).__name__,
        request_id=request_id,
    )
    return problem(
        request,
        500,
        title="Internal Server Error",
        detail="Something went wrong on our side. The request id identifies it in our logs.",
        headers={"X-Request-ID": request_id} if request_id else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through problem+json, and document the framework's 422 as such."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # The last resort for errors raised outside the routes (in a middleware); the routes' own
    # go through UnhandledErrorMiddleware, added first so it is the innermost middleware.
    app.add_exception_handler(Exception, _unhandled)
    app.add_middleware(UnhandledErrorMiddleware)
    framework_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI documents the 422 of every operation with parameters as application/json
        # (its HTTPValidationError) unless the route declares one; we answer problem+json.
        if app.openapi_schema is None:
            schema = framework_openapi()
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    response = responses.get("422")
                    if response and PROBLEM_JSON not in response.get("content", {}):
                        response["content"] = PROBLEM_SCHEMA["content"]
                    if path not in NO_DATABASE_PATHS:
                        _document_unavailable(responses)
                    # Headers the code always sends with these statuses.
                    if "429" in responses:
                        headers = responses["429"].setdefault("headers", {})
                        headers.setdefault("Retry-After", RETRY_AFTER_HEADER)
                    if "401" in responses:
                        headers = responses["401"].setdefault("headers", {})
                        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE_HEADER)
        return app.openapi_schema or framework_openapi()

    app.openapi = openapi  # type: ignore[method-assign]


# Operations that never touch the database (liveness): no 503 from an outage.
NO_DATABASE_PATHS = frozenset({"/healthz"})

RETRY_AFTER_HEADER: dict[str, Any] = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}


WWW_AUTHENTICATE_HEADER: dict[str, Any] = {
    "description": "The scheme to authenticate with: Bearer.",
    "schema": {"type": "string", "example": "Bearer"},
}


def _document_unavailable(responses: dict[str, Any]) -> None:
    # Any operation that reads the database answers 503 + Retry-After while it is
    # unreachable (UnhandledErrorMiddleware); a provider-side 503 has the same shape.
    response = responses.setdefault("503", {"description": "Service Unavailable"})
    response.setdefault("content", PROBLEM_SCHEMA["content"])
    response.setdefault("headers", {}).setdefault("Retry-After", RETRY_AFTER_HEADER)


PROBLEM_SCHEMA: dict[str, Any] = {
    "content": {
        PROBLEM_JSON: {
            "schema": {
                "type": "object",
                "required": ["type", "title", "status", "detail", "instance"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                    "request_id": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
                "additionalProperties": True,
            }
        }
    }
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json bodies for `codes`."""
    return {code: {"description": HTTPStatus(code).phrase, **PROBLEM_SCHEMA} for code in codes}
