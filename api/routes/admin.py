"""The admin API, for operators (an operator key; a studio's key is a 403): studios and
their keys, terms, quotas and grants; named limits; regions and links; nodes (drain,
disable, enable); every studio's jobs; the audit log. Each change is the same use case
the command line calls, recorded in the audit log in the change's own transaction."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import Field
from sqlmodel import Session

from api.deps import KnownQuery, Offset, OperatorDep, OperatorsDep, ServiceDep
from api.schemas import (
    STUDIO_ERRORS,
    AdminJob,
    AdminJobPage,
    AdminNode,
    AuditEntry,
    AuditPage,
    KeyPublic,
    LimitChange,
    LimitPublic,
    LinkChange,
    LinkPublic,
    NewKey,
    PoolTerms,
    Problem,
    RegionChange,
    RegionPublic,
    StudioAdmin,
    StudioChange,
    StudioCreate,
    StudioCreated,
)
from scheduler.core.states import JobState
from scheduler.errors import InvalidRequest, NotFound
from scheduler.usecases.audit import read_audit
from scheduler.usecases.regions import list_links, list_regions
from scheduler.usecases.submissions import Label, Metadata, Text

# A name a path or query gives (a studio's, a node's, a key's prefix): text a database
# can store, so a NUL or a lone surrogate is a 422, never the database's error.
Name = Annotated[Text, Field(min_length=1, max_length=200)]

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[KnownQuery],
    responses={
        **STUDIO_ERRORS,
        403: {"model": Problem, "description": "a studio's key, or none of an operator"},
        409: {"model": Problem},
    },
)


# Studios -------------------------------------------------------------------------------


@router.get("/studios", response_model=list[StudioAdmin])
def list_studios(_operator: OperatorDep, service: ServiceDep) -> list[StudioAdmin]:
    return [StudioAdmin.of(studio) for studio in service.list_studios()]


@router.post("/studios", response_model=StudioCreated, status_code=status.HTTP_201_CREATED)
def create_studio(body: StudioCreate, operator: OperatorDep, service: ServiceDep) -> StudioCreated:
    studio, key = service.create_studio(
        body.name, body.weight, body.allow_scene_scripts, body.allow_templates, actor=operator
    )
    return StudioCreated(studio=StudioAdmin.of(studio), key=key)


@router.patch("/studios/{name}", response_model=StudioAdmin)
def change_studio(
    name: Name, body: StudioChange, operator: OperatorDep, service: ServiceDep
) -> StudioAdmin:
    """Each setting given is changed (and audited) on its own, in the order of the body's
    model; one that is refused leaves the later ones unchanged and says which."""
    given = body.model_fields_set
    studio = None
    if "weight" in given and body.weight is not None:
        studio = service.set_weight(name, body.weight, operator)
    if "allow_scene_scripts" in given and body.allow_scene_scripts is not None:
        studio = service.set_scene_scripts(name, body.allow_scene_scripts, operator)
    if "allow_templates" in given and body.allow_templates is not None:
        studio = service.set_templates(name, body.allow_templates, operator)
    quotas = {"max_queued_jobs", "max_queued_frames", "requests_per_second"}
    if given & quotas:
        current = service.get_studio(name)
        values = {q: getattr(body, q) if q in given else getattr(current, q) for q in quotas}
        studio = service.set_quota(
            name, values["max_queued_jobs"], values["max_queued_frames"],
            values["requests_per_second"], operator,
        )  # fmt: skip
    if "home_region" in given:
        studio = service.set_home_region(name, body.home_region, operator)
    return StudioAdmin.of(studio or service.get_studio(name))


@router.put("/studios/{name}/pools/{pool}", response_model=PoolTerms)
def set_terms(
    name: Name, pool: Label, body: PoolTerms, operator: OperatorDep, service: ServiceDep
) -> PoolTerms:
    """The studio's guaranteed (``minimum``) and burst (``maximum``) slots in a pool."""
    terms = service.set_terms(name, pool, body.minimum, body.maximum, operator)
    return PoolTerms(minimum=terms.min_slots, maximum=terms.max_slots)


@router.get("/studios/{name}/keys", response_model=list[KeyPublic])
def list_keys(name: Name, _operator: OperatorDep, service: ServiceDep) -> list[KeyPublic]:
    return [KeyPublic.of(key) for key in service.list_keys(name)]


@router.post("/studios/{name}/keys", response_model=NewKey, status_code=status.HTTP_201_CREATED)
def create_key(name: Name, operator: OperatorDep, service: ServiceDep) -> NewKey:
    """A new key for the studio (rotation: give it, then revoke the old one)."""
    return NewKey(key=service.create_key(name, operator))


@router.post("/studios/{name}/keys/{prefix}/revoke", response_model=KeyPublic)
def revoke_key(name: Name, prefix: Name, operator: OperatorDep, service: ServiceDep) -> KeyPublic:
    """Refused from then on (by every API process within 10 s: their key caches)."""
    return KeyPublic.of(service.revoke_key(name, prefix, operator))


# Limits --------------------------------------------------------------------------------


@router.get("/limits", response_model=list[LimitPublic])
def list_limits(_operator: OperatorDep, service: ServiceDep) -> list[LimitPublic]:
    limits = service.list_limits()
    return [LimitPublic(name=limit.name, capacity=limit.capacity) for limit in limits]


@router.put("/limits/{name}", response_model=LimitPublic)
def set_limit(
    name: Label, body: LimitChange, operator: OperatorDep, service: ServiceDep
) -> LimitPublic:
    limit = service.set_limit(name, body.capacity, operator)
    return LimitPublic(name=limit.name, capacity=limit.capacity)


# Regions and links ---------------------------------------------------------------------


@router.get("/regions", response_model=list[RegionPublic])
def get_regions(_operator: OperatorDep, operators: OperatorsDep) -> list[RegionPublic]:
    with Session(operators.engine) as session:
        return [RegionPublic.of(region) for region in list_regions(session)]


@router.put("/regions/{name}", response_model=RegionPublic)
def put_region(
    name: Label, body: RegionChange, operator: OperatorDep, operators: OperatorsDep
) -> RegionPublic:
    """Create or change a region's signals; frames already billed keep their bills."""
    figures = body.model_dump(exclude_unset=True)
    return RegionPublic.of(operators.set_region(name, operator, **figures))


@router.get("/links", response_model=list[LinkPublic])
def get_links(_operator: OperatorDep, operators: OperatorsDep) -> list[LinkPublic]:
    with Session(operators.engine) as session:
        return [LinkPublic.of(link) for link in list_links(session)]


@router.put("/links/{a}/{b}", response_model=LinkPublic)
def put_link(
    a: Label, b: Label, body: LinkChange, operator: OperatorDep, operators: OperatorsDep
) -> LinkPublic:
    """The network between two regions, the same both ways."""
    link = operators.set_link(
        a, b, operator, bandwidth_mbps=body.bandwidth_mbps, latency_ms=body.latency_ms,
        price_per_gb=body.price_per_gb, source=body.source,
    )  # fmt: skip
    return LinkPublic.of(link)


@router.delete("/links/{a}/{b}", status_code=status.HTTP_204_NO_CONTENT)
def delete_link(a: Label, b: Label, operator: OperatorDep, operators: OperatorsDep) -> None:
    if not operators.remove_link(a, b, operator):
        raise NotFound(f"no link between {a!r} and {b!r}")


# Nodes ---------------------------------------------------------------------------------


@router.get("/nodes", response_model=list[AdminNode])
def get_nodes(_operator: OperatorDep, operators: OperatorsDep) -> list[AdminNode]:
    current = operators.current_chunks()
    return [AdminNode.with_chunks(node, current) for node in operators.list_nodes()]


@router.post("/nodes/{name}/{action}", response_model=AdminNode)
def change_node(
    name: Name, action: Name, operator: OperatorDep, operators: OperatorsDep
) -> AdminNode:
    """``drain`` (finish running chunks, take none), ``disable`` (take none; its chunks
    go to other nodes at once) or ``enable``."""
    return AdminNode.of(operators.set_node(name, action, operator).node)


@router.get("/pools")
def get_pools(_operator: OperatorDep, operators: OperatorsDep) -> list[dict[str, object]]:
    """Each pool now: online nodes, slots, slots busy, frames waiting, and each studio's
    share (chunks rendering, weight, guaranteed and burst slots)."""
    return operators.pools()


# Every studio's jobs, and the audit log ------------------------------------------------


@router.get("/jobs", response_model=AdminJobPage)
def list_jobs(
    _operator: OperatorDep,
    operators: OperatorsDep,
    studio: Annotated[Name | None, Query()] = None,
    state: JobState | None = None,
    show: Annotated[Metadata | None, Query()] = None,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> AdminJobPage:
    rows, total = operators.list_jobs(limit, offset, studio, state, show)
    return AdminJobPage(
        items=[AdminJob.of(job, name) for job, name in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/audit", response_model=AuditPage)
def get_audit(
    _operator: OperatorDep,
    operators: OperatorsDep,
    actor: Annotated[Name | None, Query()] = None,
    action: Annotated[Name | None, Query(description="job.cancel, or a prefix: job.")] = None,
    since: Annotated[dt.datetime | None, Query(description="with a time zone")] = None,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> AuditPage:
    """Who changed what, when: the latest first."""
    if since is not None and since.tzinfo is None:
        raise InvalidRequest("since", "give a time zone (2026-12-01T09:00:00+08:00)", "query")
    with Session(operators.engine) as session:
        rows, total = read_audit(
            session, limit, offset, actor, action, since.timestamp() if since else None
        )
        items = [AuditEntry.of(row) for row in rows]
    return AuditPage(items=items, total=total, limit=limit, offset=offset)
