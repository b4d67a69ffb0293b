"""The webhook sender: delivers the outbox's pending deliveries (scheduler/db/outbox.py)
from a thread of the scheduler process, off the dispatch loop, so that a slow or dead
receiver never slows dispatch or ingestion.

Each round records what the senders finished, then claims the deliveries that are due,
as many as there are free senders (``webhook_senders``), by moving their ``next_at`` a
lease on (compare-and-set: two schedulers never send one delivery at once), and starts
sending them: a round waits for no receiver, so a slow one holds one sender, not the
others. Each POST goes to the address its URL's host was checked at (its name in the
Host header and for TLS), within ``webhook_timeout`` per phase, no redirects followed,
the answer's body unread. The outcome: a 2xx is delivered; anything else is
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
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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
        # A claim outlives its send: a receiver answers within the timeout of each phase
        # (connect, write, read); one that trickles its headers holds one sender, not all.
        self.lease = settings.webhook_timeout * 10 + 60
        self.pool = ThreadPoolExecutor(settings.webhook_senders, thread_name_prefix="webhook")
        self.inflight: dict[Future[Outcome], Claim] = {}

    def run(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Deliver until ``stop``; a round that started nothing waits ``idle`` seconds."""
        try:
            while not stop.is_set():
                try:
                    started = self.send_due()
                except Exception:  # a database outage: the next round tries again
                    log.exception("webhook round failed")
                    started = 0
                if not started:
                    stop.wait(idle)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def send_due(self) -> int:
        """One round: record what the senders finished, then claim what is due for the
        senders that are free and start sending it; how many were started. A round never
        waits for a receiver: a slow one holds its sender only."""
        self.record_finished()
        room = self.settings.webhook_senders - len(self.inflight)
        claims = self.claim(room) if room > 0 else []
        for claim in claims:
            self.inflight[self.pool.submit(self.post, claim)] = claim
        return len(claims)

    def record_finished(self, wait: float = 0.0) -> None:
        """Record the outcomes of the sends that ended (waiting up to ``wait`` s for them)."""
        if wait and self.inflight:
            futures.wait(list(self.inflight), timeout=wait)
        ended = [future for future in self.inflight if future.done()]
        if ended:
            self.record([(self.inflight.pop(future), future.result()) for future in ended])

    def claim(self, limit: int = BATCH) -> list[Claim]:
        now = self.clock()
        with Session(self.engine) as session:
            due = session.exec(
                select(WebhookDelivery, WebhookRow, WebhookEvent)
                .join(WebhookRow, col(WebhookRow.id) == col(WebhookDelivery.webhook_id))
                .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
                .where(WebhookDelivery.state == "pending", col(WebhookDelivery.next_at) <= now)
                .order_by(col(WebhookDelivery.next_at))
                .limit(min(limit, BATCH))
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
            target = check_url(claim.url, self.settings.webhook_private_addresses)
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
            "Host": target.host,
            "Content-Type": "application/json",
            "User-Agent": "renderfarm-webhooks",
            "Renderfarm-Event": claim.kind,
            "Renderfarm-Event-Id": claim.event_id,
            "Renderfarm-Delivery": str(claim.delivery_id),
            SIGNATURE_HEADER: sign(claim.secret, int(self.clock()), body),
        }
        try:  # to the address checked, its name for the Host header and TLS; the body unread
            with self.client.stream(
                "POST", target.url, content=body, headers=headers,
                timeout=self.settings.webhook_timeout,
                extensions={"sni_hostname": target.hostname},
            ) as answer:  # fmt: skip
                status = answer.status_code
        except httpx.HTTPError as error:
            return Outcome(None, f"{type(error).__name__} calling {target.hostname}: {error}"[:500])
        return Outcome(status, None if 200 <= status < 300 else f"answered {status}")

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
