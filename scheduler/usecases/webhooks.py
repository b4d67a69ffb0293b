"""Webhooks: a studio subscribes a URL to kinds of events of its jobs (``job.done``,
``job.failed``, ``job.held``, ``frame.failed``), and reads each delivery's log.

Each delivery is a POST of JSON ``{"id": "evt_...", "type": "job.done", "created_at":
..., "data": {...}}``, signed as Stripe signs: the header ``Renderfarm-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the subscription's secret>``
(the secret is shown once, when subscribing). A receiver checks the signature and that
``t`` is recent, and uses the event id to ignore a delivery it has had (a delivery is
at least once). The sender (scheduler/dispatch/webhooks.py) retries with exponential
backoff for a day.

Unless the farm allows it (``RENDERFARM_WEBHOOK_PRIVATE_ADDRESSES``), a URL may not
name, or resolve to, a loopback, private, link-local or otherwise reserved address: a
studio cannot make the farm call into the farm's own network. It is checked when
subscribing and again at each delivery, whose connection goes to the very address
checked (a name that resolves to a public address for the check cannot send the
connection to a private one); an IPv4 address carried in IPv6 (mapped, NAT64) is
judged as itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import WebhookDelivery, WebhookEvent, WebhookRow
from scheduler.db.outbox import EVENT_KINDS
from scheduler.errors import Conflict, InvalidRequest, NotFound

SIGNATURE_HEADER = "Renderfarm-Signature"
MAX_WEBHOOKS = 20  # a studio's subscriptions


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature holds and was made within ``tolerance`` s."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = sign(secret, timestamp, body).split("v1=")[1]
    fresh = abs(now - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True, slots=True)
class Pinned:
    """A URL with its host resolved once and checked: where to connect (``url``, with the
    address in place of the name), and the name for the Host header and TLS (so that a
    name cannot resolve to a public address for the check and a private one for the
    connection)."""

    url: str
    host: str  # the Host header: the name, and its port where the URL gave one
    hostname: str  # for TLS: the certificate is checked against it


def check_url(url: str, private_allowed: bool) -> Pinned:
    """The URL pinned to an address the farm will call, or ``InvalidRequest``: not
    http(s), no host, credentials in it, or (unless ``private_allowed``) an address
    inside a private network, whatever the name resolves to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url", "an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InvalidRequest("url", "no credentials in the URL: verify the signature instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest("url", "its port is not a number") from None
    addresses = resolve(parts.hostname, port)
    if not private_allowed:
        for address in addresses:
            if not _public(address):
                raise InvalidRequest(
                    "url", f"{parts.hostname} is a private or reserved address ({address}): "
                    "the farm calls only public receivers",
                )  # fmt: skip
    address = addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    return Pinned(parts._replace(netloc=netloc).geturl(), host, parts.hostname)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")  # IPv4-compatible IPv6, deprecated


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet, an IPv4 address carried in IPv6
    (mapped, NAT64, compatible) judged as itself."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
        if inner is None and (address in _NAT64 or address in _COMPATIBLE) and int(address) > 1:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            return inner.is_global
    return address.is_global


def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise InvalidRequest("url", f"{host} does not resolve: {error}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]


@dataclass(frozen=True, slots=True)
class DeliveryView:
    delivery: WebhookDelivery
    event: WebhookEvent


class WebhookService:
    def __init__(
        self, engine: Engine, private_allowed: bool, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.private_allowed = private_allowed
        self.clock = clock

    def subscribe(self, studio_id: int, url: str, events: Sequence[str]) -> tuple[WebhookRow, str]:
        """A new subscription and its signing secret (returned once)."""
        unknown = sorted(set(events) - set(EVENT_KINDS))
        if unknown or not events:
            raise InvalidRequest("events", f"some of {list(EVENT_KINDS)}, not {unknown or []}")
        check_url(url, self.private_allowed)
        secret = "whsec_" + secrets.token_urlsafe(32)
        with Session(self.engine) as session:
            count = session.exec(
                select(func.count())
                .select_from(WebhookRow)
                .where(WebhookRow.studio_id == studio_id, col(WebhookRow.deleted_at).is_(None))
            ).one()
            if count >= MAX_WEBHOOKS:
                raise Conflict(f"a studio has at most {MAX_WEBHOOKS} webhooks: delete one")
            hook = WebhookRow(
                studio_id=studio_id,
                url=url,
                events=sorted(set(events)),
                secret=secret,
                created_at=self.clock(),
            )
            session.add(hook)
            session.commit()
            session.refresh(hook)
            return hook, secret

    def subscriptions(self, studio_id: int) -> Sequence[WebhookRow]:
        with Session(self.engine) as session:
            return session.exec(
                select(WebhookRow)
                .where(WebhookRow.studio_id == studio_id, col(WebhookRow.deleted_at).is_(None))
                .order_by(col(WebhookRow.id))
            ).all()

    def delete(self, studio_id: int, hook_id: int) -> None:
        """No new delivery; pending ones end as failed when their turn comes; the log
        stays readable."""
        with Session(self.engine) as session:
            hook = self._own(session, studio_id, hook_id)
            hook.deleted_at = self.clock()
            session.add(hook)
            session.commit()

    def deliveries(
        self, studio_id: int, hook_id: int, limit: int, offset: int
    ) -> tuple[list[DeliveryView], int]:
        """The subscription's deliveries, the latest first, with their events."""
        with Session(self.engine) as session:
            self._own(session, studio_id, hook_id, deleted_too=True)
            mine = WebhookDelivery.webhook_id == hook_id
            total = session.exec(
                select(func.count()).select_from(WebhookDelivery).where(mine)
            ).one()
            rows = session.exec(
                select(WebhookDelivery, WebhookEvent)
                .join(WebhookEvent, col(WebhookEvent.id) == col(WebhookDelivery.event_id))
                .where(mine)
                .order_by(col(WebhookDelivery.id).desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return [DeliveryView(d, e) for d, e in rows], total

    def _own(
        self, session: Session, studio_id: int, hook_id: int, deleted_too: bool = False
    ) -> WebhookRow:
        hook = session.get(WebhookRow, hook_id)
        if hook is None or hook.studio_id != studio_id or (hook.deleted_at and not deleted_too):
            raise NotFound(f"no webhook {hook_id}")
        return hook
