"""Exactly-once requests: a studio's ``Idempotency-Key`` and the first answer given to it.

A request with a key the studio has not used is done, and the key's record (the
request's method, path and body hash, and the answer) is written in the transaction of
what the request created, through the ``keep`` hook the use case calls just before it
commits: the two are committed together or not at all, so a process that dies at any
moment leaves neither a job without its key nor a key without its job. Then:

- the same key and the same request again: the first answer, replayed; nothing is done;
- the same key and another request (method, path or body): refused, ``InvalidRequest``
  (422, as the IETF draft "The Idempotency-Key HTTP Header Field" asks);
- a request answered with an error created nothing and recorded nothing: a retry with
  its key is evaluated afresh;
- two requests with one key at once: the unique index on (studio, key) lets one commit.
  The other's transaction waits on that index (PostgreSQL) or on the write lock
  (SQLite) for the first to end, is rolled back, and answers with the first's answer.
  So a duplicate waits for the first transaction instead of being told "in progress";
  ``Conflict`` (409, retry) is left for a key whose record vanished in between.

A key is its studio's: another studio's same key is another key, and never replays.
Keys are kept ``retention`` seconds (24 h, like Stripe's); a studio's expired keys are
deleted when it next sends a key, and ``collect`` deletes every studio's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from scheduler.db import IdempotencyRow
from scheduler.errors import Conflict, InvalidRequest

RETENTION_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255

T = TypeVar("T")
Keep = Callable[[Session, T], None]


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A studio's request as its key's record remembers it."""

    studio_id: int
    key: str
    method: str
    path: str
    body_hash: str


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False  # the first answer to this key, sent again


def hash_body(body: Any) -> str:
    """SHA-256 of the body as canonical JSON: the same request, however it was spelled
    (key order, spaces), hashes the same."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


class _KeyTaken(Exception):
    """Another request with the key committed first (inside ``answer_once`` only)."""


class IdempotencyKeys:
    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        retention: float = RETENTION_SECONDS,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.retention = retention

    def answer_once(
        self,
        request: KeyedRequest,
        status_code: int,
        act: Callable[[Keep[T]], object],
        body_of: Callable[[T], dict[str, Any]],
    ) -> Answer:
        """The answer to ``request``: the stored one if its key was used for it, else
        ``act``'s. ``act`` runs the use case with the hook it must call in its transaction,
        before it commits, with what it made; ``body_of`` turns that into the answer's
        body. Errors of ``act`` go through: nothing was stored for them."""
        stored = self.replay(request)
        if stored is not None:
            return stored
        kept: list[Answer] = []

        def keep(session: Session, made: T) -> None:
            answer = Answer(status_code, body_of(made))
            session.add(
                IdempotencyRow(
                    studio_id=request.studio_id,
                    key=request.key,
                    method=request.method,
                    path=request.path,
                    request_hash=request.body_hash,
                    status_code=answer.status_code,
                    response=answer.body,
                    created_at=self.clock(),
                )
            )
            try:
                session.flush()  # waits here while another request with the key is open
            except IntegrityError:
                raise _KeyTaken from None
            kept.append(answer)

        try:
            act(keep)
        except _KeyTaken:
            stored = self.replay(request)
            if stored is None:
                raise Conflict(
                    f"a request with Idempotency-Key {request.key!r} is in progress: retry"
                ) from None
            return stored
        if not kept:
            raise RuntimeError("the use case committed without keeping its idempotency key")
        return kept[0]

    def replay(self, request: KeyedRequest) -> Answer | None:
        """The first answer to the request's key, or None if the studio has not used the
        key (within the retention). Deletes the studio's expired keys on the way."""
        with Session(self.engine) as session:
            session.execute(
                delete(IdempotencyRow).where(
                    col(IdempotencyRow.studio_id) == request.studio_id,
                    col(IdempotencyRow.created_at) < self.clock() - self.retention,
                )
            )
            row = session.exec(
                select(IdempotencyRow).where(
                    IdempotencyRow.studio_id == request.studio_id,
                    IdempotencyRow.key == request.key,
                )
            ).first()
            first = None if row is None else (row.method, row.path, row.request_hash)
            answer = None if row is None else Answer(row.status_code, row.response, replayed=True)
            session.commit()
        if first is None:
            return None
        if first != (request.method, request.path, request.body_hash):
            method, path, _hash = first
            raise InvalidRequest(
                "Idempotency-Key",
                f"{request.key!r} was used for another request ({method} {path}"
                f"{' with another body' if path == request.path else ''}): "
                "use a new key for a new request",
                source="header",
            )
        return answer

    def collect(self) -> int:
        """Delete every studio's expired keys; how many."""
        with Session(self.engine) as session:
            deleted = session.execute(
                delete(IdempotencyRow).where(
                    col(IdempotencyRow.created_at) < self.clock() - self.retention
                )
            )
            session.commit()
            return int(getattr(deleted, "rowcount", 0) or 0)
