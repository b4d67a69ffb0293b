"""The webhook outbox: what happened to a studio's jobs, written in the transaction
that made it happen, with a delivery per subscription that wants it; a sender
(scheduler/dispatch/webhooks.py) delivers them later, so no receiver, slow or dead,
ever holds up the transaction that wrote them. Nothing is written for a studio with
no subscription to the kind."""

from __future__ import annotations

import secrets
from typing import Any

from sqlmodel import Session, col, select

from scheduler.db.tables import WebhookDelivery, WebhookEvent, WebhookRow

EVENT_KINDS = ("job.done", "job.failed", "job.held", "frame.failed")


def emit(
    session: Session, studio_id: int, kind: str, now: float, job_id: int | None, **payload: Any
) -> None:
    """Record the event and a pending delivery to each of the studio's subscriptions to
    ``kind``, in the session's transaction."""
    hooks = session.exec(
        select(WebhookRow.id, WebhookRow.events).where(
            WebhookRow.studio_id == studio_id, col(WebhookRow.deleted_at).is_(None)
        )
    ).all()
    wanted = [hook for hook, kinds in hooks if hook is not None and kind in (kinds or ())]
    if not wanted:
        return
    event = WebhookEvent(
        event_id="evt_" + secrets.token_hex(12),
        studio_id=studio_id,
        kind=kind,
        job_id=job_id,
        payload={"job_id": job_id, **payload},
        created_at=now,
    )
    session.add(event)
    session.flush()
    assert event.id is not None
    session.add_all(
        WebhookDelivery(
            webhook_id=hook, event_id=event.id, state="pending", next_at=now, created_at=now
        )
        for hook in wanted
    )
