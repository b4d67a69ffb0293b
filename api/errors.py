"""The one place where domain errors become HTTP statuses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scheduler.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RenderfarmError,
    TooLarge,
    Unauthorized,
)

STATUS = {NotFound: 404, InvalidRequest: 422, Conflict: 409, TooLarge: 413, Unauthorized: 401}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RenderfarmError)
    async def _domain_error(_request: Request, error: RenderfarmError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(error, InvalidRequest):
            detail: object = [
                {"loc": ["body", error.field], "msg": error.message, "type": "value_error"}
            ]
        else:
            detail = str(error)
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
