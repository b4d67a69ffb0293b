"""Unauthenticated routes for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import KnownQuery
from api.schemas import Problem
from scheduler.usecases.health import readiness

router = APIRouter(tags=["system"], dependencies=[KnownQuery], responses={422: {"model": Problem}})


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers (restart it if not)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "the database or the broker does not answer"}},
)
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database and the broker answer (send no studio here if not)."""
    checks = readiness(request.app.state.engine, request.app.state.settings)
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
