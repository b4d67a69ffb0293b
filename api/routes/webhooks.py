"""A studio's webhooks: subscribe a URL to its jobs' events, list and delete them, and
read each one's delivery log (scheduler/usecases/webhooks.py says how deliveries are
signed, retried and refused)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from api.deps import KnownQuery, Offset, RowId, StudioDep, own_id
from api.schemas import (
    STUDIO_ERRORS,
    DeliveryPage,
    DeliveryPublic,
    Problem,
    WebhookCreate,
    WebhookPublic,
)
from scheduler.usecases.webhooks import WebhookService

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    dependencies=[KnownQuery],
    responses={**STUDIO_ERRORS, 403: {"model": Problem}},
)


def _service(request: Request) -> WebhookService:
    settings = request.app.state.settings
    return WebhookService(request.app.state.engine, settings.webhook_private_addresses)


@router.post("", response_model=WebhookPublic, status_code=status.HTTP_201_CREATED)
def subscribe(body: WebhookCreate, studio: StudioDep, request: Request) -> WebhookPublic:
    """Subscribe ``url`` to ``events``; the answer carries the signing secret, once."""
    hook, secret = _service(request).subscribe(own_id(studio), str(body.url), body.events)
    return WebhookPublic.of(hook, secret)


@router.get("", response_model=list[WebhookPublic])
def list_webhooks(studio: StudioDep, request: Request) -> list[WebhookPublic]:
    return [WebhookPublic.of(hook) for hook in _service(request).subscriptions(own_id(studio))]


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: RowId, studio: StudioDep, request: Request) -> None:
    """No new deliveries; the ones pending end as failed; the log stays readable."""
    _service(request).delete(own_id(studio), webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
def deliveries(
    webhook_id: RowId,
    studio: StudioDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> DeliveryPage:
    """Each event sent to the webhook, the latest first: its attempts and outcome."""
    found, total = _service(request).deliveries(own_id(studio), webhook_id, limit, offset)
    return DeliveryPage(
        items=[DeliveryPublic.of(view) for view in found], total=total, limit=limit, offset=offset
    )
