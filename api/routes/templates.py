"""Studio routes under /v1/templates: submit an OpenJD job template (its jobs, one per
step, are made together), read it with its jobs, list, and cancel them all.

The jobs themselves are read and steered under /v1/jobs like any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response

from api.deps import KnownQuery, Offset, RowId, ServiceDep, StudioDep, own_id, studio_actor
from api.idempotency import IdempotencyDep, IdempotencyKey, answer_keyed
from api.schemas import STUDIO_ERRORS, Problem, TemplateCreate, TemplatePage, TemplatePublic
from scheduler.usecases.jobs import TemplateDetail

router = APIRouter(
    prefix="/v1/templates",
    tags=["templates"],
    dependencies=[KnownQuery],
    responses=STUDIO_ERRORS,
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TemplatePublic)
def submit_template(
    body: TemplateCreate,
    request: Request,
    studio: StudioDep,
    service: ServiceDep,
    keys: IdempotencyDep,
    idempotency_key: IdempotencyKey = None,
) -> TemplatePublic | Response:
    """Submit an OpenJD job template with its parameter values: a job per step, whose
    ``dependsOn`` become the jobs' dependencies. An invalid template or parameter value
    is a 422 with openjd-model's message at the path of what it names
    (``["body", "template", "steps", 0, "script"]``, ``["body", "parameters", "Frames"]``).
    ``Idempotency-Key`` as for jobs."""
    if idempotency_key is not None:
        return answer_keyed(
            keys, own_id(studio), idempotency_key, request, body,
            lambda keep: service.submit_template(own_id(studio), body, keep, studio_actor(studio)),
            _public,
        )  # fmt: skip
    return TemplatePublic.of(
        service.submit_template(own_id(studio), body, actor=studio_actor(studio))
    )


def _public(detail: TemplateDetail) -> dict[str, Any]:
    return TemplatePublic.of(detail).model_dump(mode="json")


@router.get("", response_model=TemplatePage)
def list_templates(
    studio: StudioDep,
    service: ServiceDep,
    limit: int = Query(20, ge=1, le=100),
    offset: Offset = 0,
) -> TemplatePage:
    details, total = service.list_templates(own_id(studio), limit, offset)
    return TemplatePage(
        items=[TemplatePublic.of(d) for d in details], total=total, limit=limit, offset=offset
    )


@router.get("/{template_id}", response_model=TemplatePublic)
def get_template(template_id: RowId, studio: StudioDep, service: ServiceDep) -> TemplatePublic:
    return TemplatePublic.of(service.get_template(own_id(studio), template_id))


@router.post(
    "/{template_id}/cancel", response_model=TemplatePublic, responses={409: {"model": Problem}}
)
def cancel_template(template_id: RowId, studio: StudioDep, service: ServiceDep) -> TemplatePublic:
    """Cancel every unfinished job of the template."""
    cancelled = service.cancel_template(own_id(studio), template_id, studio_actor(studio))
    return TemplatePublic.of(cancelled)
