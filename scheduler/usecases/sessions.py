"""Logins to the web monitor: a studio's or an operator's key, given once on the login
page, becomes a session: a random token in an HttpOnly, SameSite=Strict cookie (Secure
behind HTTPS) and a CSRF token the page sends with every change. The database keeps the
token's hash, so a stolen database holds no usable session; a session ends at logout,
after ``SESSION_SECONDS``, or as soon as the key it was opened with is revoked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.db import Operator, Studio, WebSession
from scheduler.errors import Unauthorized
from scheduler.usecases.jobs import hash_key, studio_of_key
from scheduler.usecases.operators import OPERATOR_KEY_PREFIX, operator_of_key

SESSION_SECONDS = 12 * 3600  # a working day
Kind = Literal["studio", "operator"]
# Who holds an unrevoked key, by the key's hash: the same lookups as the API's keys
HOLDERS: dict[str, Callable[[Session, str], Studio | Operator | None]] = {
    "studio": studio_of_key,
    "operator": operator_of_key,
}


@dataclass(frozen=True, slots=True)
class Login:
    """Who a session is: a studio or an operator, by id and name, and its CSRF token."""

    kind: Kind
    subject_id: int
    name: str
    csrf: str


class WebSessions:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock

    def open(self, key: str) -> tuple[str, Login]:
        """A new session for a valid, unrevoked key: its token (for the cookie only)."""
        key = key.strip()
        digest = hash_key(key)
        with Session(self.engine) as session:
            kind: Kind = "operator" if key.startswith(OPERATOR_KEY_PREFIX) else "studio"
            holder = HOLDERS[kind](session, digest)
            if holder is None or holder.id is None:
                raise Unauthorized("unknown or revoked key")
            subject_id, name = holder.id, holder.name
            token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), self.clock()
            session.add(
                WebSession(
                    token_hash=hash_key(token),
                    kind=kind,
                    subject_id=subject_id,
                    key_hash=digest,
                    csrf=csrf,
                    created_at=now,
                    expires_at=now + SESSION_SECONDS,
                )
            )
            session.execute(delete(WebSession).where(col(WebSession.expires_at) < now))
            session.commit()
            return token, Login(kind, subject_id, name, csrf)

    def find(self, token: str) -> Login:
        """The session of a cookie's token, still valid, or ``Unauthorized``."""
        with Session(self.engine) as session:
            row = session.get(WebSession, hash_key(token))
            if row is None or row.expires_at < self.clock():
                raise Unauthorized("not logged in, or the session expired: log in again")
            holder = HOLDERS[row.kind](session, row.key_hash)
            if holder is None:
                raise Unauthorized("the key of this session was revoked: log in again")
            return Login(row.kind, row.subject_id, holder.name, row.csrf)  # type: ignore[arg-type]

    def close(self, token: str) -> None:
        with Session(self.engine) as session:
            session.execute(delete(WebSession).where(col(WebSession.token_hash) == hash_key(token)))
            session.commit()
