"""The audit log: who changed what, when. Operators' actions (over the admin API or the
command line) and studios' actions that change jobs are recorded in the transaction of
the change, so a change and its record are committed together or not at all; read over
``GET /v1/admin/audit`` and ``renderfarm audit``.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func
from sqlmodel import Session, col, select

from scheduler.db import AuditRow

ActorKind = Literal["operator", "studio"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an operator (by name; on the command line, ``cli:<user>``) or a studio."""

    kind: ActorKind
    name: str

    @classmethod
    def operator(cls, name: str) -> Actor:
        return cls("operator", name)

    @classmethod
    def studio(cls, name: str) -> Actor:
        return cls("studio", name)

    @classmethod
    def command_line(cls) -> Actor:
        """The operator at this terminal: the command line needs no key (it reaches the
        database directly), so the system user is who it was."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container's user without a name
            user = "unknown"
        return cls("operator", f"cli:{user}")


def record(
    session: Session, actor: Actor | None, action: str, target: str, at: float, **detail: Any
) -> None:
    """Add the action's entry to the session's transaction (nothing without an actor:
    the farm's own changes, such as the scheduler's, are not audited)."""
    if actor is None:
        return
    session.add(
        AuditRow(
            at=at,
            actor_kind=actor.kind,
            actor=actor.name[:200],
            action=action,
            target=target[:200],
            detail={k: v for k, v in detail.items() if v is not None} or None,
        )
    )


def read_audit(
    session: Session,
    limit: int,
    offset: int = 0,
    actor: str | None = None,
    action: str | None = None,
    since: float | None = None,
) -> tuple[Sequence[AuditRow], int]:
    """Entries, the latest first, by actor's name, action (``job.cancel``, or a prefix
    ending in a dot: ``job.``) and time where given; and how many there are."""
    where = []
    if actor is not None:
        where.append(col(AuditRow.actor) == actor)
    if action is not None:
        where.append(
            col(AuditRow.action).startswith(action, autoescape=True)
            if action.endswith(".")
            else col(AuditRow.action) == action
        )
    if since is not None:
        where.append(col(AuditRow.at) >= since)
    total = session.exec(select(func.count()).select_from(AuditRow).where(*where)).one()
    rows = session.exec(
        select(AuditRow)
        .where(*where)
        .order_by(col(AuditRow.at).desc(), col(AuditRow.id).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return rows, total
