"""Reconciling the database with the world: lost nodes, lost messages, stale attempts."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import update
from sqlmodel import Session, col, select

from scheduler.core.policy import is_node_lost, unclaimed_to_resend
from scheduler.core.states import ACTIVE_CHUNK_STATES, AttemptState, ChunkState
from scheduler.db import AttemptRow, ChunkRow, NodeRow
from scheduler.wire.messages import node_queue, pool_queue, task_id_for

log = logging.getLogger(__name__)


def mark_lost_nodes(session: Session, now: float, timeout: float) -> None:
    """Nodes silent for ``timeout`` s are lost; their running chunks go back to the queue."""
    online = session.exec(select(NodeRow).where(NodeRow.state == "online")).all()
    lost = [n.name for n in online if is_node_lost(n.last_heartbeat, now, timeout)]
    if not lost:
        return
    log.warning("nodes lost (no heartbeat for %.0f s): %s", timeout, lost)
    session.execute(
        update(NodeRow).where(col(NodeRow.name).in_(lost)).values(state="lost", running=0)
    )
    # Their running chunks go back to the queue; the old attempts are superseded.
    session.execute(
        update(ChunkRow)
        .where(col(ChunkRow.node).in_(lost), col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))
        .values(state=ChunkState.QUEUED, node=None)
    )


def requeue_unclaimed(
    session: Session, now: float, after: float, queue_depth: Callable[[str], int]
) -> None:
    """Chunks sent but never claimed while their queue is empty: send again."""
    unclaimed: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for chunk_id, pool, node, sent_at in session.exec(
        select(ChunkRow.id, ChunkRow.pool, ChunkRow.node, ChunkRow.dispatched_at).where(
            ChunkRow.state == ChunkState.DISPATCHED,
            col(ChunkRow.dispatched_at) < now - after,
        )
    ):
        if chunk_id is not None:
            queue = node_queue(node) if node else pool_queue(pool)
            unclaimed[queue].append((chunk_id, sent_at or 0.0))
    for queue, chunks in unclaimed.items():
        resend = unclaimed_to_resend(chunks, queue_depth(queue), now, after)
        if resend:
            log.warning(
                "queue %s: %d chunk(s) sent but never claimed; sending again", queue, len(resend)
            )
            session.execute(
                update(ChunkRow)
                .where(col(ChunkRow.id).in_(resend), col(ChunkRow.state) == ChunkState.DISPATCHED)
                .values(state=ChunkState.QUEUED, node=None)
            )


def close_stale_attempts(session: Session, now: float) -> list[str]:
    """Attempts still open whose chunk moved on: cancelled, or superseded by a newer one."""
    stale = session.exec(
        select(AttemptRow, ChunkRow.state, ChunkRow.attempts)
        .join(ChunkRow, col(ChunkRow.id) == col(AttemptRow.chunk_id))
        .where(col(AttemptRow.state).in_((AttemptState.DISPATCHED, AttemptState.RUNNING)))
        .where(
            (col(ChunkRow.attempts) != col(AttemptRow.number))
            | col(ChunkRow.state).not_in(ACTIVE_CHUNK_STATES)
        )
    ).all()
    task_ids = []
    for attempt, chunk_state, _current in stale:
        attempt.state = (
            AttemptState.CANCELLED
            if chunk_state == ChunkState.CANCELLED
            else AttemptState.SUPERSEDED
        )
        attempt.finished_at = now
        session.add(attempt)
        task_ids.append(task_id_for(attempt.chunk_id, attempt.number))
    return task_ids
