"""POST /v1/plans: a workload simulated on a farm under each placement policy, side by
side (scheduler/core/planner.py), nothing rendered: the shots given, or the studio's
rendered jobs (``"workload": "past"``), on the regions given, or the farm's own."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import KnownQuery, ServiceDep, StudioDep
from api.schemas import Problem
from scheduler.usecases.plans import PlanRequest, plan_for

router = APIRouter(
    prefix="/v1/plans",
    tags=["plans"],
    dependencies=[KnownQuery],
    responses={
        400: {"model": Problem, "description": "the body is not JSON (not even UTF-8)"},
        401: {"model": Problem},
        413: {"model": Problem, "description": "the body is larger than the farm takes"},
        422: {"model": Problem},
        429: {"model": Problem, "description": "past the studio's request rate"},
    },
)


@router.post("")
def make_plan(body: PlanRequest, studio: StudioDep, service: ServiceDep) -> dict[str, Any]:
    """Simulate and report per policy: makespan, utilisation, facility kWh, cost, gCO2,
    deadlines missed and frames per region. At most 200,000 frames per policy."""
    assert studio.id is not None
    return plan_for(service.engine, service.settings, studio.id, body, service.clock())
