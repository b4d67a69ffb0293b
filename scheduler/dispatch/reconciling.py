"""Reconciling the database with the world: lost nodes, lost messages, stale attempts."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import delete, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from scheduler.core.policy import is_node_lost, unclaimed_to_resend
from scheduler.core.states import ACTIVE_CHUNK_STATES, AttemptState, ChunkState
from scheduler.db import AttemptRow, ChunkRow, NodeRow
from scheduler.db.among import among
from scheduler.db.transitions import close_attempts, requeue_chunks
from scheduler.wire.messages import NodeLife, bundle_attempts, node_queue, task_id_for

log = logging.getLogger(__name__)


def mark_lost_nodes(session: Session, now: float, timeout: float) -> list[str]:
    """Nodes silent for ``timeout`` s are lost; their running chunks go back to the
    queue. Returns the nodes lost."""
    silent = session.execute(  # only the silent are read: a farm has thousands online
        sql_select(col(NodeRow.name), col(NodeRow.last_heartbeat)).where(
            col(NodeRow.state).in_((NodeLife.ONLINE, NodeLife.LEAVING)),  # left: not lost
            col(NodeRow.last_heartbeat) < now - timeout,
        )
    )
    lost = [name for name, last in silent if is_node_lost(last, now, timeout)]
    if not lost:
        return []
    log.warning("nodes lost (no heartbeat for %.0f s): %s", timeout, lost)
    session.execute(
        update(NodeRow).where(col(NodeRow.name).in_(lost)).values(state="lost", running=0)
    )
    # Their running chunks go back to the queue; the old attempts are superseded.
    chunks = session.exec(
        select(ChunkRow.id).where(
            col(ChunkRow.node).in_(lost), col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES)
        )
    ).all()
    requeue_chunks(session, [c for c in chunks if c is not None], ACTIVE_CHUNK_STATES, now)
    return lost


def forget_departed_nodes(session: Session, now: float, after: float) -> list[str]:
    """Nodes that left or were lost ``after`` s ago, hold nothing and carry no
    operator's say (a drained or disabled machine that comes back stays so): forgotten
    (their attempts and frames keep the name). A pool that Kubernetes scales up and down
    gets a node of a new name each time; the farm's node list would grow without end.
    Returns their names: their Celery queues go too (a message a dying node put back
    after it said it left would stay in Redis for ever)."""
    held = select(ChunkRow.node).where(
        col(ChunkRow.node).is_not(None), col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES)
    )
    names = list(
        session.exec(
            select(NodeRow.name).where(
                col(NodeRow.state).in_((NodeLife.LEFT, "lost")),
                col(NodeRow.admin) == "enabled",
                col(NodeRow.last_heartbeat) < now - after,
                col(NodeRow.name).not_in(held),
            )
        )
    )
    if names:
        session.execute(delete(NodeRow).where(col(NodeRow.name).in_(names)))
        log.info("forgot %d node(s) gone for %.0f s: %s", len(names), after,
                 ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""))  # fmt: skip
    return names


def requeue_from_disabled(session: Session, now: float) -> None:
    """Chunks a dispatch placed on a node while an operator was disabling it (the
    dispatch read the node list before the disable committed) go back to the queue."""
    chunks = session.exec(
        select(ChunkRow.id)
        .join(NodeRow, col(NodeRow.name) == col(ChunkRow.node))
        .where(col(NodeRow.admin) == "disabled", col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))
    ).all()
    if chunks:
        log.warning("%d chunk(s) on disabled nodes: queued again", len(chunks))
        requeue_chunks(session, [c for c in chunks if c is not None], ACTIVE_CHUNK_STATES, now)


def requeue_unclaimed(
    session: Session,
    now: float,
    after: float,
    queue_depths: Callable[[Sequence[str]], Mapping[str, int]],
) -> None:
    """Chunks sent but never claimed while their queue is empty: send again. The
    queues are asked together and the chunks requeued together: a rack gone silent
    leaves hundreds of queues so, and one requeue per queue held the loop for
    seconds (on PostgreSQL, long enough to lose the leader lock)."""
    unclaimed: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for chunk_id, node, sent_at in session.exec(
        select(ChunkRow.id, ChunkRow.node, ChunkRow.dispatched_at).where(
            ChunkRow.state == ChunkState.DISPATCHED,
            col(ChunkRow.dispatched_at) < now - after,
        )
    ):
        if chunk_id is not None and node is not None:  # a chunk is placed as it is claimed
            unclaimed[node_queue(node)].append((chunk_id, sent_at or 0.0))
    if not unclaimed:
        return
    depths = queue_depths(list(unclaimed))
    resend: dict[str, list[int]] = {}
    for queue, chunks in unclaimed.items():
        if found := unclaimed_to_resend(chunks, depths[queue], now, after):
            resend[queue] = found
    if resend:
        log.warning(
            "%d chunk(s) sent but never claimed (queues %s); sending again",
            sum(len(chunks) for chunks in resend.values()),
            ", ".join(sorted(resend)[:10]) + (", ..." if len(resend) > 10 else ""),
        )
        every = [chunk_id for chunks in resend.values() for chunk_id in chunks]
        requeue_chunks(session, every, [ChunkState.DISPATCHED], now)


def close_stale_attempts(session: Session, now: float) -> list[str]:
    """Attempts still open whose chunk moved on: cancelled, or superseded by a newer one.
    Returns the Celery task ids to revoke: theirs, and those of the bundles that carried
    them and carry no attempt still open (a cancelled job's bundle stops, though some
    of its chunks rendered; a bundle carrying a chunk still wanted goes on)."""
    stale = session.execute(
        sql_select(
            col(AttemptRow.id), col(AttemptRow.chunk_id), col(AttemptRow.number),
            col(ChunkRow.state), col(AttemptRow.message),
        )
        .join(ChunkRow, col(ChunkRow.id) == col(AttemptRow.chunk_id))
        .where(col(AttemptRow.state).in_((AttemptState.DISPATCHED, AttemptState.RUNNING)))
        .where(
            (col(ChunkRow.attempts) != col(AttemptRow.number))
            | col(ChunkRow.state).not_in(ACTIVE_CHUNK_STATES)
        )
    ).all()  # fmt: skip
    ending: dict[AttemptState, list[int]] = {
        AttemptState.CANCELLED: [],
        AttemptState.SUPERSEDED: [],
    }
    task_ids = []
    bundles = set()
    for attempt_id, chunk_id, number, chunk_state, message in stale:
        assert attempt_id is not None
        cancelled = chunk_state == ChunkState.CANCELLED
        ending[AttemptState.CANCELLED if cancelled else AttemptState.SUPERSEDED].append(attempt_id)
        task_ids.append(task_id_for(chunk_id, number))
        if message is not None:
            bundles.add(message)
    for state, ids in ending.items():
        close_attempts(session, ids, state, now)
    return task_ids + _unwanted_bundles(session, bundles)


def unwanted_bundles_of(session: Session, attempts: Sequence[tuple[int, int]]) -> list[str]:
    """The bundles that carried these (chunk id, attempt) and carry none still open."""
    if not attempts:
        return []
    wanted = set(attempts)
    rows = session.execute(
        sql_select(col(AttemptRow.chunk_id), col(AttemptRow.number), col(AttemptRow.message)).where(
            among(col(AttemptRow.chunk_id), "ids"), col(AttemptRow.message).is_not(None)
        ),
        {"ids": sorted({chunk for chunk, _ in wanted})},
    )
    bundles = {message for chunk, number, message in rows if (chunk, number) in wanted}
    return _unwanted_bundles(session, bundles)


def _unwanted_bundles(session: Session, bundles: set[str]) -> list[str]:
    """Of these bundles, those none of whose attempts is open any more."""
    carried = {bundle: bundle_attempts(bundle) for bundle in sorted(bundles)}
    chunks = sorted({chunk for pairs in carried.values() for chunk, _ in pairs})
    if not chunks:
        return []
    rows = session.execute(
        sql_select(col(AttemptRow.chunk_id), col(AttemptRow.number)).where(
            among(col(AttemptRow.chunk_id), "ids"),
            col(AttemptRow.state).in_((AttemptState.DISPATCHED, AttemptState.RUNNING)),
        ),
        {"ids": chunks},
    )
    still_open = {(chunk, number) for chunk, number in rows}
    return [bundle for bundle, pairs in carried.items() if not still_open.intersection(pairs)]
