"""Operators: who runs the farm, with keys of their own for the admin API (``/v1/admin``),
and what only they may do beyond the studios' settings (scheduler/usecases/jobs.py):
their own keys, the nodes (drain, disable, enable), the regions and links, a view of
every studio's jobs, and the audit log. The command line calls the same use cases.

An operator key (``rfo_...``) is kept as a hash, shown once, and reaches nothing of a
studio's API; a studio key reaches nothing of the admin API.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.core.frames import format_frame_spec
from scheduler.core.states import ACTIVE_CHUNK_STATES, JobState
from scheduler.db import ChunkRow, JobRow, NodeRow, Operator, OperatorKey, Studio, Subscription
from scheduler.db.engine import read_only
from scheduler.db.transitions import requeue_chunks
from scheduler.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from scheduler.usecases.audit import Actor, record
from scheduler.usecases.jobs import hash_key
from scheduler.usecases.regions import remove_link, set_link, set_region

OPERATOR_KEY_PREFIX = "rfo_"
NodeAdmin = Literal["enabled", "draining", "disabled"]
NODE_ACTIONS: dict[str, NodeAdmin] = {
    "drain": "draining",
    "disable": "disabled",
    "enable": "enabled",
}


@dataclass(frozen=True, slots=True)
class NodeChange:
    node: NodeRow
    requeued: int  # its chunks sent to other nodes (disable)


class OperatorService:
    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        wake: Callable[[str], None] = lambda node: None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._read_only = read_only(engine)
        # Called with the node's name once its admin state has committed: the scheduler
        # reads it again at once (else within 5 s) and sends work elsewhere (or to it).
        self.wake = wake

    # Operators and their keys ----------------------------------------------------------

    def create_operator(self, name: str, actor: Actor | None = None) -> tuple[Operator, str]:
        """A new operator and its first key (returned once, stored hashed)."""
        name = name.strip()
        if not name or len(name) > 100 or name.startswith("cli:"):
            raise InvalidRequest("name", "an operator's name has 1 to 100 characters, not cli:")
        with Session(self.engine) as session:
            if session.exec(select(Operator).where(Operator.name == name)).first():
                raise Conflict(f"an operator named {name!r} exists already")
            operator = Operator(name=name, created_at=self.clock())
            session.add(operator)
            session.flush()
            key = self._add_key(session, operator)
            record(session, actor, "operator.create", name, self.clock(), key=key[:11])
            session.commit()
            session.refresh(operator)
            return operator, key

    def create_key(self, name: str, actor: Actor | None = None) -> str:
        with Session(self.engine) as session:
            operator = self._named(session, name)
            key = self._add_key(session, operator)
            record(session, actor, "operator.key.create", name, self.clock(), key=key[:11])
            session.commit()
            return key

    def _add_key(self, session: Session, operator: Operator) -> str:
        assert operator.id is not None
        key = OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32)
        session.add(
            OperatorKey(
                operator_id=operator.id,
                key_hash=hash_key(key),
                prefix=key[:11],
                created_at=self.clock(),
            )
        )
        return key

    def revoke_key(self, prefix: str, actor: Actor | None = None) -> OperatorKey:
        """Revoke the operator key that starts with ``prefix`` (``list_operators``)."""
        with Session(self.engine) as session:
            found = session.exec(
                select(OperatorKey).where(col(OperatorKey.prefix).startswith(prefix))
            ).all()
            if len(prefix) < 7 or len(found) != 1:
                raise NotFound(f"no single operator key starts with {prefix!r}")
            [key] = found
            if key.revoked_at is None:
                key.revoked_at = self.clock()
                session.add(key)
                record(session, actor, "operator.key.revoke", key.prefix, self.clock())
            session.commit()
            session.refresh(key)
            return key

    def list_operators(self) -> list[tuple[Operator, list[OperatorKey]]]:
        with Session(self._read_only) as session:
            operators = session.exec(select(Operator).order_by(col(Operator.name))).all()
            keys = session.exec(select(OperatorKey).order_by(col(OperatorKey.id))).all()
            return [(o, [k for k in keys if k.operator_id == o.id]) for o in operators]

    def authenticate(self, key: str) -> Operator:
        with Session(self._read_only) as session:
            operator = operator_of_key(session, hash_key(key))
            if operator is None:
                raise Unauthorized("unknown or revoked operator key")
            return operator

    def _named(self, session: Session, name: str) -> Operator:
        operator = session.exec(select(Operator).where(Operator.name == name)).first()
        if operator is None:
            raise NotFound(f"no operator named {name!r}")
        return operator

    # Nodes -----------------------------------------------------------------------------

    def list_nodes(self) -> Sequence[NodeRow]:
        with Session(self._read_only) as session:
            return session.exec(select(NodeRow).order_by(col(NodeRow.name))).all()

    def current_chunks(self) -> dict[str, list[str]]:
        """What each node has now: ``job 12: 3-4 (running)``, by node."""
        with Session(self._read_only) as session:
            rows = session.exec(
                select(ChunkRow)
                .where(
                    col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES), col(ChunkRow.node).is_not(None)
                )
                .order_by(col(ChunkRow.job_id), col(ChunkRow.first_frame))
            ).all()
        found: dict[str, list[str]] = {}
        for chunk in rows:
            frames = format_frame_spec(chunk.frames())
            found.setdefault(chunk.node or "", []).append(
                f"job {chunk.job_id}: {frames} ({chunk.state})"
            )
        return found

    def set_node(self, name: str, action: str, actor: Actor | None = None) -> NodeChange:
        """``drain``: the node renders what it has and takes nothing new; ``disable``:
        nothing new, and its chunks go back to the queue at once (the scheduler revokes
        them on the node and sends them elsewhere; what the node still reports of them
        changes nothing); ``enable``: back to work."""
        if action not in NODE_ACTIONS:
            raise InvalidRequest("action", f"drain, disable or enable, not {action!r}")
        with Session(self.engine) as session:
            node = session.get(NodeRow, name)
            if node is None:
                raise NotFound(f"no node named {name!r}")
            node.admin = NODE_ACTIONS[action]
            session.add(node)
            requeued = 0
            if action == "disable":
                chunks = session.exec(
                    select(ChunkRow.id).where(
                        ChunkRow.node == name, col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES)
                    )
                ).all()
                requeued = requeue_chunks(
                    session, [c for c in chunks if c is not None], ACTIVE_CHUNK_STATES,
                    self.clock(),
                )  # fmt: skip
            record(session, actor, f"node.{action}", name, self.clock(), requeued=requeued or None)
            session.commit()
            self.wake(name)
            session.refresh(node)
            return NodeChange(node, requeued)

    # Regions and links -----------------------------------------------------------------

    def set_region(self, name: str, actor: Actor | None = None, **figures: Any) -> Any:
        with Session(self.engine) as session:
            region = set_region(session, name, self.clock(), **figures)
            record(session, actor, "region.set", name, self.clock(), **_jsonable(figures))
            session.commit()
            session.refresh(region)
            return region

    def set_link(self, a: str, b: str, actor: Actor | None = None, **figures: Any) -> Any:
        with Session(self.engine) as session:
            link = set_link(session, a, b, self.clock(), **figures)
            record(session, actor, "link.set", f"{a} - {b}", self.clock(), **figures)
            session.commit()
            session.refresh(link)
            return link

    def remove_link(self, a: str, b: str, actor: Actor | None = None) -> bool:
        with Session(self.engine) as session:
            found = remove_link(session, a, b)
            if found:
                record(session, actor, "link.remove", f"{a} - {b}", self.clock())
            session.commit()
            return found

    # Pools -----------------------------------------------------------------------------

    def pools(self) -> list[dict[str, Any]]:
        """Each pool now: its online nodes, slots and slots busy, frames waiting, and
        each studio's share of it (chunks rendering, weight, guaranteed and burst slots)."""
        with Session(self._read_only) as session:
            pools: dict[str, dict[str, Any]] = {}

            def pool(name: str) -> dict[str, Any]:
                return pools.setdefault(
                    name, {"name": name, "nodes": 0, "slots": 0, "busy": 0, "queued_frames": 0,
                           "studios": {}},
                )  # fmt: skip

            for name, nodes, slots, busy in session.execute(
                sql_select(
                    col(NodeRow.pool), func.count(), func.sum(NodeRow.slots),
                    func.sum(NodeRow.running),
                ).where(col(NodeRow.state) == "online").group_by(col(NodeRow.pool))
            ):  # fmt: skip
                pool(name).update(nodes=int(nodes), slots=int(slots or 0), busy=int(busy or 0))
            for name, frames in session.execute(
                sql_select(col(ChunkRow.pool), func.sum(ChunkRow.frame_count))
                .where(col(ChunkRow.state) == "queued")
                .group_by(col(ChunkRow.pool))
            ):
                pool(name)["queued_frames"] = int(frames or 0)
            studios = {s.id: s for s in session.exec(select(Studio))}
            for name, studio_id, running in session.execute(
                sql_select(col(ChunkRow.pool), col(JobRow.studio_id), func.count())
                .join(JobRow, col(JobRow.id) == col(ChunkRow.job_id))
                .where(col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))
                .group_by(col(ChunkRow.pool), col(JobRow.studio_id))
            ):
                studio = studios[studio_id]
                pool(name)["studios"][studio.name] = {
                    "running": int(running),
                    "weight": studio.weight,
                }
            for terms in session.exec(select(Subscription)):
                studio = studios[terms.studio_id]
                held = pool(terms.pool)["studios"].setdefault(
                    studio.name, {"running": 0, "weight": studio.weight}
                )
                held.update(minimum=terms.min_slots, maximum=terms.max_slots)
            return [
                {**p, "studios": [{"name": n, **v} for n, v in sorted(p["studios"].items())]}
                for _, p in sorted(pools.items())
            ]

    # Every studio's jobs ---------------------------------------------------------------

    def list_jobs(
        self,
        limit: int,
        offset: int,
        studio: str | None = None,
        state: JobState | None = None,
        show: str | None = None,
    ) -> tuple[list[tuple[JobRow, str]], int]:
        """Jobs of every studio, newest first, each with its studio's name."""
        where: list[Any] = []
        if studio is not None:
            where.append(col(Studio.name) == studio)
        if state is not None:
            where.append(col(JobRow.state) == state)
        if show is not None:
            where.append(col(JobRow.show) == show)
        with Session(self._read_only) as session:
            joined = select(JobRow, Studio.name).join(
                Studio, col(Studio.id) == col(JobRow.studio_id)
            )
            total = session.exec(
                select(func.count())
                .select_from(JobRow)
                .join(Studio, col(Studio.id) == col(JobRow.studio_id))
                .where(*where)
            ).one()
            rows = session.exec(
                joined.where(*where).order_by(col(JobRow.id).desc()).offset(offset).limit(limit)
            ).all()
            return [(job, name) for job, name in rows], total


def operator_of_key(session: Session, key_hash: str) -> Operator | None:
    """The operator of an unrevoked key, by the key's hash."""
    return session.exec(
        select(Operator)
        .join(OperatorKey, col(OperatorKey.operator_id) == col(Operator.id))
        .where(OperatorKey.key_hash == key_hash, col(OperatorKey.revoked_at).is_(None))
    ).first()


def _jsonable(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: [list(s) for s in v] if isinstance(v, list) else v for k, v in figures.items()}
