"""The one place where errors become HTTP statuses and bodies.

An error body may quote what the client sent (pydantic's 422s do), and what a client
sends may not be JSON-encodable as it stands: a lone surrogate, NaN or infinity. Every
error body goes through ``printable`` first, so a bad input gets its 4xx, never a 500.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from scheduler.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    Misconfigured,
    NotFound,
    RenderfarmError,
    TooLarge,
    TooMany,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")  # what a 405's Allow may name

STATUS = {
    NotFound: 404,
    InvalidRequest: 422,
    Conflict: 409,
    TooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
    Unavailable: 503,
    Misconfigured: 503,  # the farm's own settings: nothing the studio can fix
    TooMany: 429,
}


def _loc(source: str, path: tuple[str | int, ...]) -> list[str | int]:
    return [source] if path == (source,) else [source, *path]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RenderfarmError)
    async def _domain_error(_request: Request, error: RenderfarmError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(error, TooMany):
            headers = {"Retry-After": str(error.retry_after)}
        if isinstance(error, InvalidRequest):
            detail: object = [
                {"loc": _loc(error.source, path), "msg": message, "type": "value_error"}
                for path, message in error.problems
            ]
        else:
            detail = str(error)
        return JSONResponse({"detail": printable(detail)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        detail = jsonable_encoder(error.errors(), custom_encoder={float: _float_text})
        return JSONResponse({"detail": printable(detail)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        """Starlette's own answers, but a 405's ``Allow`` names every method of the path
        (Starlette's names those of the first route that matched it only)."""
        if error.status_code == 405:
            allowed = [
                method
                for method in METHODS
                if any(
                    route.matches({**request.scope, "method": method})[0] is Match.FULL
                    for route in request.app.router.routes
                )
            ]
            error.headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, error)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, error: OperationalError) -> JSONResponse:
        """The database does not answer (or SQLite stayed locked past every retry):
        nothing was recorded; the studio may retry (with its Idempotency-Key)."""
        log.warning("%s %s: the database does not answer: %s", request.method,
                    request.url.path, error.orig)  # fmt: skip
        return JSONResponse(
            {"detail": "the farm's database does not answer: nothing was recorded; retry"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        """A bug, answered as the API answers everything, in JSON (Starlette's own
        answer is plain text), without the exception's text: it is logged instead."""
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal error: the farm logged it; try again, or tell its operator"},
            status_code=500,
        )


def printable(value: Any) -> Any:
    """``value`` with every string made encodable (lone surrogates replaced) and every
    non-finite number written as text, so that it can always be sent as JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value


def _float_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
