"""POST /v1/plans: a workload simulated on a farm under each placement policy, side by
side (scheduler/core/planner.py), nothing rendered: the shots given, or the studio's
rendered jobs (``"workload": "past"``), on the regions given, or the farm's own."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import KnownQuery, ServiceDep, StudioDep, own_id
from api.schemas import STUDIO_ERRORS
from scheduler.usecases.plans import PlanRequest, plan_for

router = APIRouter(
    prefix="/v1/plans",
    tags=["plans"],
    dependencies=[KnownQuery],
    responses={code: answer for code, answer in STUDIO_ERRORS.items() if code != 404},
)


@router.post("")
def make_plan(body: PlanRequest, studio: StudioDep, service: ServiceDep) -> dict[str, Any]:
    """Simulate and report per policy: makespan, utilisation, facility kWh, cost, gCO2,
    deadlines missed and frames per region. At most 200,000 frames per policy."""
    return plan_for(service.engine, service.settings, own_id(studio), body, service.clock())
