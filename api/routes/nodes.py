"""Farm routes: the render nodes as the scheduler last heard from them, as a studio may
see them: what they offer (pool, region, slots, hardware, tags), not the machines'
host names (an operator's CLI shows those: `renderfarm nodes`)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KnownQuery, ServiceDep, StudioDep
from api.schemas import NodePublic, Problem

router = APIRouter(
    prefix="/v1/nodes",
    tags=["nodes"],
    dependencies=[KnownQuery],
    responses={401: {"model": Problem}, 422: {"model": Problem}},
)


@router.get("", response_model=list[NodePublic])
def list_nodes(_studio: StudioDep, service: ServiceDep) -> list[NodePublic]:
    return [NodePublic.of(node) for node in service.list_nodes()]
