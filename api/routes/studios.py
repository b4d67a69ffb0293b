"""The studio's own account: its usage of the farm, day by day, as it will be billed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Day, KnownQuery, ServiceDep, SettingsDep, StudioDep
from api.schemas import Problem, UsageDay, UsagePublic
from scheduler.usecases.billing import EnergyTotals

router = APIRouter(
    prefix="/v1/studios",
    tags=["studios"],
    dependencies=[KnownQuery],
    responses={401: {"model": Problem}, 422: {"model": Problem}},
)


@router.get("/me/usage", response_model=UsagePublic)
def usage(
    studio: StudioDep,
    service: ServiceDep,
    settings: SettingsDep,
    since: Annotated[Day | None, Query(description="first day, YYYY-MM-DD")] = None,
    until: Annotated[Day | None, Query(description="last day, YYYY-MM-DD")] = None,
) -> UsagePublic:
    """Frames, render time, energy, cost and CO2 per billing day (days with frames)."""
    assert studio.id is not None
    days = service.usage_by_day(studio.id, since, until)
    total = UsageDay.of(days[-1][0], sum((t for _, t in days), EnergyTotals())) if days else None
    return UsagePublic(
        studio=studio.name,
        currency=settings.currency,
        timezone=settings.billing_timezone,
        days=[UsageDay.of(day, totals) for day, totals in days],
        total=total,
    )
