"""The webhook sender: delivers the outbox's pending deliveries (scheduler/db/outbox.py)
from a thread of the scheduler process, off the dispatch loop, so that a slow or dead
receiver never slows dispatch or ingestion.

Each round claims the deliveries that are due by moving their ``next_at`` a lease on
(compare-and-set: two schedulers never send one delivery at once), POSTs them
concurrently (``webhook_senders`` at a time, each within ``webhook_timeout``, no
redirects followed), and records the outcome: a 2xx is delivered; anything else is
retried after ``webhook_retry_seconds``, doubling up to an hour, until
``webhook_retry_hours`` after the event, then it is failed. A process that dies
mid-send leaves the claim to expire: the delivery is sent again (at least once; the
event id lets a receiver ignore it). ``renderfarm_webhook_deliveries_total{outcome}``
counts what happened.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import WebhookDelivery, WebhookEvent, WebhookRow
from scheduler.errors import InvalidRequest
from scheduler.settings import Settings
from scheduler.usecases.webhooks import SIGNATURE_HEADER, check_url, sign

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "renderfarm_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retried (the receiver failed or "
    "did not answer; tried again later) or failed (given up after the retry period).",
    ["outcome"],
)
MAX_BACKOFF = 3600.0
BATCH = 64  # deliveries claimed a round


@dataclass(frozen=True, slots=True)
class Claim:
    delivery_id: int
    attempts: int
    url: str
    secret: str
    deleted: bool
    event_id: str
    kind: str
    payload: dict[str, Any]
    created_at: float  # the event's


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None  # the receiver's, if it answered
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        client: httpx.Client | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.client = client or httpx.Client(follow_redirects=False)
        self.lease = settings.webhook_timeout * 3 + 30  # a claim outlives its send

    def run(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Deliver until ``stop``; a round that found nothing waits ``idle`` seconds."""
        while not stop.is_set():
            try:
                sent = self.send_due()
            except Exception:  # a database outage: the next round tries again
                log.exception("webhook round failed")
                sent = 0
            if not sent:
                stop.wait(idle)

    def send_due(self) -> int:
        """One round: claim what is due, send it, record the outcomes; how many."""
        claims = self.claim()
        if not claims:
            return 0
        with ThreadPoolExecutor(self.settings.webhook_senders) as pool:
            outcomes = list(pool.map(self.post, claims))
        self.record(list(zip(claims, outcomes, strict=True)))
        return len(claims)

    def claim(self) -> list[Claim]:
        now = self.clock()
        with Session(self.engine) as session:
            due = session.exec(
                select(WebhookDelivery, WebhookRow, WebhookEvent)
                .join(WebhookRow, col(WebhookRow.id) == col(WebhookDelivery.webhook_id))
                .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
                .where(WebhookDelivery.state == "pending", col(WebhookDelivery.next_at) <= now)
                .order_by(col(WebhookDelivery.next_at))
                .limit(BATCH)
            ).all()
            claims = []
            for delivery, hook, event in due:
                taken = session.execute(
                    update(WebhookDelivery)
                    .where(
                        col(WebhookDelivery.id) == delivery.id,
                        col(WebhookDelivery.next_at) == delivery.next_at,
                        col(WebhookDelivery.state) == "pending",
                    )
                    .values(next_at=now + self.lease)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount:  # type: ignore[attr-defined]
                    assert delivery.id is not None
                    claims.append(
                        Claim(
                            delivery.id,
                            delivery.attempts,
                            hook.url,
                            hook.secret,
                            hook.deleted_at is not None,
                            event.event_id,
                            event.kind,
                            dict(event.payload or {}),
                            event.created_at,
                        )
                    )
            session.commit()
            return claims

    def post(self, claim: Claim) -> Outcome:
        """Send one delivery; never raises."""
        if claim.deleted:
            return Outcome(None, "the subscription was deleted")
        try:
            check_url(claim.url, self.settings.webhook_private_addresses)
        except InvalidRequest as error:
            return Outcome(None, error.message)
        body = json.dumps(
            {
                "id": claim.event_id,
                "type": claim.kind,
                "created_at": dt.datetime.fromtimestamp(claim.created_at, dt.UTC).isoformat(),
                "data": claim.payload,
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "renderfarm-webhooks",
            "Renderfarm-Event": claim.kind,
            "Renderfarm-Event-Id": claim.event_id,
            "Renderfarm-Delivery": str(claim.delivery_id),
            SIGNATURE_HEADER: sign(claim.secret, int(self.clock()), body),
        }
        try:
            answer = self.client.post(
                claim.url, content=body, headers=headers, timeout=self.settings.webhook_timeout
            )
        except httpx.HTTPError as error:
            host = urlsplit(claim.url).hostname
            return Outcome(None, f"{type(error).__name__} calling {host}: {error}"[:500])
        text = "" if answer.is_success else f"answered {answer.status_code}"
        return Outcome(answer.status_code, text or None)

    def record(self, results: list[tuple[Claim, Outcome]]) -> None:
        now = self.clock()
        limit = self.settings.webhook_retry_hours * 3600
        with Session(self.engine) as session:
            for claim, outcome in results:
                attempts = claim.attempts + 1
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_status": outcome.status,
                    "last_error": outcome.error,
                }
                if outcome.delivered:
                    values.update(state="delivered", delivered_at=now, next_at=now)
                    DELIVERIES.labels("delivered").inc()
                else:
                    wait = min(
                        MAX_BACKOFF, self.settings.webhook_retry_seconds * 2 ** (attempts - 1)
                    )
                    if claim.deleted or now + wait > claim.created_at + limit:
                        values.update(state="failed", next_at=now)
                        DELIVERIES.labels("failed").inc()
                        log.warning("webhook delivery %d failed for good: %s",
                                    claim.delivery_id, outcome.error)  # fmt: skip
                    else:
                        values.update(next_at=now + wait)
                        DELIVERIES.labels("retried").inc()
                session.execute(
                    update(WebhookDelivery)
                    .where(col(WebhookDelivery.id) == claim.delivery_id)
                    .values(values)
                    .execution_options(synchronize_session=False)
                )
            session.commit()
