"""The scheduler's use cases: dispatch a tick, ingest node events, reconcile.

Each method loads what it needs, asks the pure core (``scheduler.core.policy``),
commits the decision, and only then talks to the broker. If the process dies
between the commit and the send, the chunk is "dispatched" with no message
anywhere; ``reconcile`` notices it (unclaimed for ``redispatch_after`` seconds with
the pool queue empty) and sends it again as a new attempt.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, bindparam, func, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.broker import Broker
from scheduler.core.policy import (
    Assignment,
    DispatchSnapshot,
    JobCandidate,
    PoolCapacity,
    QueuedChunk,
    chunk_state_after_event,
    dispatch_order,
    is_node_lost,
    plan_dispatch,
    queue_buffer,
    unclaimed_to_resend,
    vanished_attempts,
)
from scheduler.core.states import AttemptState, ChunkState, JobState
from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow, NodeRow
from scheduler.messages import (
    ChunkMessage,
    FrameReport,
    NodeReport,
    attempt_log_path,
    output_pattern_for,
    task_id_for,
)
from scheduler.progress import refresh_job_states
from scheduler.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = (ChunkState.DISPATCHED, ChunkState.RUNNING)
VANISHED_GRACE_SECONDS = 2.0
CHUNK_EVENT_KINDS = frozenset({"started", "frame", "finished", "failed"})

# The statements of the hot path, built once: SQLAlchemy spends more time building
# and keying a statement than SQLite spends running it (see BENCHMARKS.md).
_LIVE_SLOTS = (
    sql_select(col(NodeRow.pool), func.sum(NodeRow.slots))
    .where(col(NodeRow.state) == "online", col(NodeRow.last_heartbeat) >= bindparam("since"))
    .group_by(col(NodeRow.pool))
)
_ACTIVE_CHUNKS = (
    sql_select(col(ChunkRow.pool), func.count())
    .where(col(ChunkRow.state).in_(ACTIVE))
    .group_by(col(ChunkRow.pool))
)
_DISPATCHABLE_JOBS = select(JobRow).where(
    col(JobRow.state).in_((JobState.QUEUED, JobState.RUNNING)),
    col(JobRow.suspended).is_(False),
    col(JobRow.cancelled).is_(False),
    col(JobRow.pool).in_(bindparam("pools", expanding=True)),
)
_NEXT_QUEUED = (
    sql_select(col(ChunkRow.id), col(ChunkRow.attempts), col(ChunkRow.not_before))
    .where(col(ChunkRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.QUEUED)
    .where(col(ChunkRow.not_before).is_(None) | (col(ChunkRow.not_before) <= bindparam("now")))
    .order_by(col(ChunkRow.position))
    .limit(bindparam("wanted", type_=Integer))
)
_CLAIM = (
    update(ChunkRow)
    .where(
        col(ChunkRow.id).in_(bindparam("ids", expanding=True)),
        col(ChunkRow.state) == ChunkState.QUEUED,
    )
    .values(
        state=ChunkState.DISPATCHED,
        attempts=ChunkRow.attempts + 1,
        dispatched_at=bindparam("now"),
        started_at=None,
        node=None,
    )
    .returning(
        col(ChunkRow.id),
        col(ChunkRow.job_id),
        col(ChunkRow.attempts),
        col(ChunkRow.first_frame),
        col(ChunkRow.last_frame),
        col(ChunkRow.step),
    )
)
_CHUNKS_OF_EVENTS = sql_select(
    col(ChunkRow.id), col(ChunkRow.job_id), col(ChunkRow.pool), col(ChunkRow.state),
    col(ChunkRow.attempts), col(ChunkRow.retry_base), col(JobRow.max_attempts),
).join(JobRow, col(JobRow.id) == col(ChunkRow.job_id)).where(
    col(ChunkRow.id).in_(bindparam("ids", expanding=True))
)  # fmt: skip
_FRAMES_DONE = sql_select(col(FrameResultRow.job_id), col(FrameResultRow.frame)).where(
    col(FrameResultRow.chunk_id).in_(bindparam("ids", expanding=True))
)
_JOBS_BY_ID = select(JobRow).where(col(JobRow.id).in_(bindparam("ids", expanding=True)))
_UPDATE_CHUNKS = update(ChunkRow)
_INSERT_ATTEMPTS = insert(AttemptRow)
_INSERT_RESULTS = insert(FrameResultRow)


@dataclass(slots=True)
class IngestOutcome:
    applied: int = 0
    ignored: int = 0
    frames: list[FrameResultRow] | None = None
    finished: Counter[str] = field(default_factory=Counter)  # chunks finished, by pool


class CompletionRate:
    """Chunks finished per pool over a sliding window, and the mean dispatch tick."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._finished: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._last_tick: float | None = None
        self.tick = 0.0

    def record(self, now: float, finished: Counter[str]) -> None:
        for pool, count in finished.items():
            self._finished[pool].append((now, count))

    def note_tick(self, now: float) -> None:
        if self._last_tick is not None:
            interval = min(now - self._last_tick, self.window)
            self.tick = interval if not self.tick else 0.8 * self.tick + 0.2 * interval
        self._last_tick = now

    def finished(self, pool: str, now: float) -> int:
        recent = self._finished[pool]
        while recent and recent[0][0] < now - self.window:
            recent.popleft()
        return sum(count for _, count in recent)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        broker: Broker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.broker = broker
        self.clock = clock
        self.rates = CompletionRate()

    # Dispatch --------------------------------------------------------------------------

    def dispatch_tick(self) -> list[ChunkMessage]:
        """Fill each pool's queue up to its free slots; returns what was sent."""
        now = self.clock()
        self.rates.note_tick(now)
        with Session(self.engine) as session:
            snapshot, jobs = self._load_dispatch_snapshot(session, now)
            assignments = plan_dispatch(snapshot, now)
            if not assignments:
                return []
            messages = self._save_dispatch(session, assignments, jobs, now)
            session.commit()
        self.broker.send(messages)
        return messages

    def _load_dispatch_snapshot(
        self, session: Session, now: float
    ) -> tuple[DispatchSnapshot, dict[int, JobRow]]:
        live_since = now - self.settings.node_timeout
        slots = {
            pool: int(total or 0)
            for pool, total in session.execute(_LIVE_SLOTS, {"since": live_since})
        }
        active: dict[str, int] = {pool: n for pool, n in session.execute(_ACTIVE_CHUNKS)}
        pools = {
            pool: PoolCapacity(pool, total, active.get(pool, 0), self._buffer(pool, now))
            for pool, total in slots.items()
        }
        room = {name: pool.free for name, pool in pools.items() if pool.free > 0}
        if not room:
            return DispatchSnapshot(pools, ()), {}
        jobs = session.exec(_DISPATCHABLE_JOBS, params={"pools": list(room)}).all()
        candidates: list[JobCandidate] = []
        # Chunks are loaded in the policy's own order, and only as many as could be
        # sent: the cost of a tick follows the free slots, not the size of the backlog.
        for job in sorted(jobs, key=lambda j: dispatch_order(_candidate(j, ()))):
            wanted = room.get(job.pool, 0)
            if wanted <= 0:
                continue
            assert job.id is not None
            rows = session.execute(
                _NEXT_QUEUED, {"job": job.id, "now": now, "wanted": wanted}
            ).all()
            queued = tuple(QueuedChunk(cid, n, nb) for cid, n, nb in rows if cid is not None)
            room[job.pool] = wanted - len(queued)
            if queued:
                candidates.append(_candidate(job, queued))
        return DispatchSnapshot(pools, candidates), {j.id: j for j in jobs if j.id is not None}

    def _buffer(self, pool: str, now: float) -> int:
        return queue_buffer(
            self.rates.finished(pool, now),
            self.rates.window,
            self.rates.tick,
            self.settings.dispatch_buffer,
            self.settings.max_dispatch_buffer,
        )

    def _save_dispatch(
        self,
        session: Session,
        assignments: Sequence[Assignment],
        jobs: dict[int, JobRow],
        now: float,
    ) -> list[ChunkMessage]:
        by_chunk = {a.chunk_id: a for a in assignments}
        # Compare-and-set: a chunk cancelled since the snapshot stays cancelled.
        claimed = session.execute(_CLAIM, {"ids": list(by_chunk), "now": now}).all()
        if not claimed:
            return []
        session.execute(
            _INSERT_ATTEMPTS,
            [
                {
                    "chunk_id": chunk_id,
                    "job_id": job_id,
                    "number": attempt,
                    "pool": by_chunk[chunk_id].pool,
                    "state": AttemptState.DISPATCHED,
                    "dispatched_at": now,
                }
                for chunk_id, job_id, attempt, *_ in claimed
            ],
        )
        messages = []
        for chunk_id, job_id, attempt, first, last, step in claimed:
            job = jobs[job_id]
            messages.append(
                ChunkMessage(
                    chunk_id=chunk_id,
                    attempt=attempt,
                    job_id=job_id,
                    pool=job.pool,
                    frames=list(range(first, last + 1, step)),
                    renderer=job.renderer,
                    settings=dict(job.renderer_settings),
                    output_pattern=output_pattern_for(job_id),
                    log_path=attempt_log_path(job_id, chunk_id, attempt),
                    timeout=job.timeout,
                )
            )
        refresh_job_states(session, [jobs[j] for j in {m.job_id for m in messages}], now)
        return messages

    # Events ----------------------------------------------------------------------------

    def ingest(self, events: Sequence[dict[str, Any]]) -> IngestOutcome:
        """Apply a batch of node events in one transaction; duplicates change nothing.

        Chunk events go first: a heartbeat that no longer lists an attempt was sent
        after that attempt's last event, so the event must be applied before it.
        """
        now = self.clock()
        outcome = IngestOutcome(frames=[])
        beats = [e for e in events if e.get("kind") == "heartbeat" and "info" in e]
        chunk_events = [e for e in events if _is_chunk_event(e)]
        outcome.ignored += len(events) - len(beats) - len(chunk_events)
        with Session(self.engine) as session:
            if chunk_events:
                self._apply_chunk_events(session, chunk_events, now, outcome)
            self._save_heartbeats(session, beats, now)
            session.commit()
        self.rates.record(now, outcome.finished)
        return outcome

    def _save_heartbeats(
        self, session: Session, events: Sequence[dict[str, Any]], now: float
    ) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for event in events:
            latest[event["info"]["name"]] = event
        for event in latest.values():
            report = NodeReport.from_dict(event["info"])
            node = session.get(NodeRow, report.name)
            if node is None:
                node = NodeRow(
                    name=report.name,
                    pool=report.pool,
                    hostname=report.hostname,
                    slots=report.slots,
                    cores=report.cores,
                    memory_bytes=report.memory_bytes,
                    state="online",
                    last_heartbeat=now,
                    registered_at=now,
                )
            node.pool = report.pool
            node.hostname = report.hostname
            node.slots = report.slots
            node.running = report.running
            node.cores = report.cores
            node.memory_bytes = report.memory_bytes
            node.gpus = report.gpus
            node.tags = list(report.tags)
            node.state = "online"
            node.last_heartbeat = now
            session.add(node)
            if "tasks" in event and "at" in event:
                self._requeue_vanished(session, report.name, set(event["tasks"]), event["at"])

    def _requeue_vanished(
        self, session: Session, node: str, listed: set[str], reported_at: float
    ) -> None:
        running = [
            (chunk_id, task_id_for(chunk_id, attempt), started_at or 0.0)
            for chunk_id, attempt, started_at in session.exec(
                select(ChunkRow.id, ChunkRow.attempts, ChunkRow.started_at).where(
                    ChunkRow.node == node, ChunkRow.state == ChunkState.RUNNING
                )
            )
            if chunk_id is not None
        ]
        vanished = vanished_attempts(running, listed, reported_at, VANISHED_GRACE_SECONDS)
        if vanished:
            log.warning(
                "node %s no longer holds %d running attempt(s); rendering them again",
                node,
                len(vanished),
            )
            session.execute(
                update(ChunkRow)
                .where(col(ChunkRow.id).in_(vanished), col(ChunkRow.state) == ChunkState.RUNNING)
                .values(state=ChunkState.QUEUED, node=None)
            )

    def _apply_chunk_events(
        self, session: Session, events: Sequence[dict[str, Any]], now: float, outcome: IngestOutcome
    ) -> None:
        chunk_ids = {int(e["chunk_id"]) for e in events}
        chunks: dict[int, _ChunkView] = {}
        max_attempts: dict[int, int] = {}
        for cid, job_id, pool, state, attempts, retry_base, allowed in session.execute(
            _CHUNKS_OF_EVENTS, {"ids": list(chunk_ids)}
        ):
            chunks[cid] = _ChunkView(cid, job_id, pool, ChunkState(state), attempts, retry_base)
            max_attempts[job_id] = allowed
        done_frames = {
            (job_id, frame)
            for job_id, frame in session.execute(_FRAMES_DONE, {"ids": list(chunk_ids)})
        }
        attempt_changes: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
        new_results: list[dict[str, Any]] = []
        for event in events:
            chunk = chunks.get(int(event["chunk_id"]))
            attempt_no = int(event["attempt"])
            kind = event["kind"]
            state = None
            if chunk is not None:
                state = chunk_state_after_event(
                    chunk.state,
                    chunk.attempts,
                    attempt_no,
                    kind,
                    chunk.attempts - chunk.retry_base,
                    max_attempts[chunk.job_id],
                )
            if chunk is None or state is None:
                outcome.ignored += 1
                continue
            node = str(event.get("node") or "")
            at = float(event.get("at") or now)
            attempt = attempt_changes[(chunk.id, attempt_no)]
            reports: list[FrameReport] = []
            if kind == "started":
                if chunk.state != state:
                    chunk.changes["started_at"] = at
                chunk.changes["node"] = node
                attempt.update(state=AttemptState.RUNNING, node=node, started_at=at)
            elif kind == "frame":
                reports = [FrameReport.from_dict(event["result"])]
            elif kind in ("finished", "failed"):
                if chunk.state == ChunkState.DISPATCHED:  # ended before "started" was due
                    started = float(event.get("started_at") or at)
                    chunk.changes["started_at"] = started
                    attempt["started_at"] = started
                attempt.update(node=node, finished_at=at, exit_code=event.get("exit_code"))
                chunk.changes["node"] = node
                if kind == "finished":
                    reports = [FrameReport.from_dict(r) for r in event.get("results", ())]
                    chunk.changes["finished_at"] = at
                    attempt["state"] = AttemptState.DONE
                else:
                    if state == ChunkState.FAILED:
                        chunk.changes["finished_at"] = at
                    attempt.update(state=AttemptState.FAILED, error=str(event.get("error"))[:2000])
            if kind in ("finished", "failed"):
                outcome.finished[chunk.pool] += 1
            chunk.state = state
            chunk.changes["state"] = state
            for report in reports:
                if (chunk.job_id, report.frame) in done_frames:
                    continue
                done_frames.add((chunk.job_id, report.frame))
                new_results.append(
                    {
                        "job_id": chunk.job_id,
                        "chunk_id": chunk.id,
                        "frame": report.frame,
                        "attempt": attempt_no,
                        "node": node,
                        "pool": chunk.pool,
                        "output": report.output,
                        "render_seconds": report.render_seconds,
                        "cpu_seconds": report.cpu_seconds,
                        "finished_at": at,
                    }
                )
            outcome.applied += 1
        self._save_changes(session, chunks.values(), attempt_changes)
        if new_results:
            session.execute(_INSERT_RESULTS, new_results)
            outcome.frames = [FrameResultRow(**r) for r in new_results]
        touched = {c.job_id for c in chunks.values() if c.changes}
        if touched:
            jobs = session.exec(_JOBS_BY_ID, params={"ids": list(touched)}).all()
            refresh_job_states(session, jobs, now)

    def _save_changes(
        self,
        session: Session,
        chunks: Iterable[_ChunkView],
        attempt_changes: dict[tuple[int, int], dict[str, Any]],
    ) -> None:
        """Bulk updates, one statement per shape of change."""
        _update_by_key(session, [{"id": c.id, **c.changes} for c in chunks if c.changes])
        shapes: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
        for (chunk_id, number), values in attempt_changes.items():
            if values:
                shapes[frozenset(values)].append(
                    {"b_chunk": chunk_id, "b_number": number, **values}
                )
        for columns, rows in shapes.items():
            session.execute(_attempt_update(columns), rows)

    # Reconcile -------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Mark lost nodes and requeue their chunks; requeue what the broker lost."""
        now = self.clock()
        with Session(self.engine) as session:
            self._mark_lost_nodes(session, now)
            self._requeue_unclaimed(session, now)
            session.commit()
        self.stop_stale_attempts()

    def stop_stale_attempts(self) -> list[str]:
        """Revoke attempts whose chunk moved on (cancelled, requeued, superseded).

        Cheap enough to run every loop turn, so a cancel stops renders within a tick.
        """
        now = self.clock()
        with Session(self.engine) as session:
            task_ids = self._close_stale_attempts(session, now)
            session.commit()
        self.broker.revoke(task_ids)
        return task_ids

    def _mark_lost_nodes(self, session: Session, now: float) -> None:
        online = session.exec(select(NodeRow).where(NodeRow.state == "online")).all()
        lost = [
            n.name
            for n in online
            if is_node_lost(n.last_heartbeat, now, self.settings.node_timeout)
        ]
        if not lost:
            return
        log.warning("nodes lost (no heartbeat for %.0f s): %s", self.settings.node_timeout, lost)
        session.execute(
            update(NodeRow).where(col(NodeRow.name).in_(lost)).values(state="lost", running=0)
        )
        # Their running chunks go back to the queue; the old attempts are superseded.
        session.execute(
            update(ChunkRow)
            .where(col(ChunkRow.node).in_(lost), col(ChunkRow.state).in_(ACTIVE))
            .values(state=ChunkState.QUEUED, node=None)
        )

    def _requeue_unclaimed(self, session: Session, now: float) -> None:
        unclaimed: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for chunk_id, pool, sent_at in session.exec(
            select(ChunkRow.id, ChunkRow.pool, ChunkRow.dispatched_at).where(
                ChunkRow.state == ChunkState.DISPATCHED,
                col(ChunkRow.dispatched_at) < now - self.settings.redispatch_after,
            )
        ):
            if chunk_id is not None:
                unclaimed[pool].append((chunk_id, sent_at or 0.0))
        for pool, chunks in unclaimed.items():
            resend = unclaimed_to_resend(
                chunks, self.broker.queue_depth(pool), now, self.settings.redispatch_after
            )
            if resend:
                log.warning(
                    "pool %s: %d chunk(s) sent but never claimed; sending again", pool, len(resend)
                )
                session.execute(
                    update(ChunkRow)
                    .where(
                        col(ChunkRow.id).in_(resend), col(ChunkRow.state) == ChunkState.DISPATCHED
                    )
                    .values(state=ChunkState.QUEUED)
                )

    def _close_stale_attempts(self, session: Session, now: float) -> list[str]:
        """Attempts still open whose chunk moved on: cancelled, or superseded by a newer one."""
        stale = session.exec(
            select(AttemptRow, ChunkRow.state, ChunkRow.attempts)
            .join(ChunkRow, col(ChunkRow.id) == col(AttemptRow.chunk_id))
            .where(col(AttemptRow.state).in_((AttemptState.DISPATCHED, AttemptState.RUNNING)))
            .where(
                (col(ChunkRow.attempts) != col(AttemptRow.number))
                | col(ChunkRow.state).not_in(ACTIVE)
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


@functools.cache
def _attempt_update(columns: frozenset[str]) -> Any:
    """UPDATE attempts SET <columns> WHERE (chunk_id, number) = ...; one per shape."""
    table = AttemptRow.__table__  # type: ignore[attr-defined]  # Core, so a list of parameters is a plain executemany
    return (
        table.update()  # type: ignore[attr-defined]
        .where(table.c.chunk_id == bindparam("b_chunk"), table.c.number == bindparam("b_number"))
        .values({name: bindparam(name) for name in sorted(columns)})
    )


@dataclass(slots=True)
class _ChunkView:
    """A chunk as one ingest batch sees it, with the columns the batch changed."""

    id: int
    job_id: int
    pool: str
    state: ChunkState
    attempts: int
    retry_base: int
    changes: dict[str, Any] = field(default_factory=dict)


def _update_by_key(session: Session, rows: list[dict[str, Any]]) -> None:
    """ORM bulk UPDATE of chunks by primary key, one executemany per shape."""
    shapes: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        shapes[frozenset(row)].append(row)
    for same_shape in shapes.values():
        session.execute(_UPDATE_CHUNKS, same_shape)


def _is_chunk_event(event: dict[str, Any]) -> bool:
    try:
        return event.get("kind") in CHUNK_EVENT_KINDS and (
            int(event["chunk_id"]) >= 0 and int(event["attempt"]) >= 1
        )
    except (KeyError, TypeError, ValueError):
        return False


def _candidate(job: JobRow, queued: Iterable[QueuedChunk]) -> JobCandidate:
    assert job.id is not None
    return JobCandidate(job.id, job.studio_id, job.priority, job.pool, tuple(queued))
