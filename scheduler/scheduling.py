"""The scheduler's use cases: dispatch a tick, ingest node events, reconcile.

Each method loads what it needs, asks the pure core (``scheduler.core.policy``),
commits the decision, and only then talks to the broker. If the process dies
between the commit and the send, the chunk is "dispatched" with no message
anywhere; ``reconcile`` notices it (unclaimed for ``redispatch_after`` seconds with
the pool queue empty) and sends it again as a new attempt.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, tuple_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.broker import Broker
from scheduler.core.policy import (
    Assignment,
    DispatchSnapshot,
    JobCandidate,
    PoolCapacity,
    QueuedChunk,
    accepts_event,
    chunk_state_after_failure,
    dispatch_order,
    is_node_lost,
    plan_dispatch,
    unclaimed_to_resend,
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


@dataclass(slots=True)
class IngestOutcome:
    applied: int = 0
    ignored: int = 0
    frames: list[FrameResultRow] | None = None


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

    # Dispatch --------------------------------------------------------------------------

    def dispatch_tick(self) -> list[ChunkMessage]:
        """Fill each pool's queue up to its free slots; returns what was sent."""
        now = self.clock()
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
        slots = dict(
            session.exec(
                select(NodeRow.pool, func.sum(NodeRow.slots))
                .where(NodeRow.state == "online", col(NodeRow.last_heartbeat) >= live_since)
                .group_by(col(NodeRow.pool))
            ).all()
        )
        active = dict(
            session.exec(
                select(ChunkRow.pool, func.count())
                .where(col(ChunkRow.state).in_(ACTIVE))
                .group_by(col(ChunkRow.pool))
            ).all()
        )
        pools = {
            pool: PoolCapacity(pool, int(total), active.get(pool, 0), self.settings.dispatch_buffer)
            for pool, total in slots.items()
        }
        room = {name: pool.free for name, pool in pools.items() if pool.free > 0}
        if not room:
            return DispatchSnapshot(pools, ()), {}
        jobs = session.exec(
            select(JobRow).where(
                col(JobRow.state).in_((JobState.QUEUED, JobState.RUNNING)),
                col(JobRow.suspended).is_(False),
                col(JobRow.cancelled).is_(False),
                col(JobRow.pool).in_(list(room)),
            )
        ).all()
        candidates: list[JobCandidate] = []
        # Chunks are loaded in the policy's own order, and only as many as could be
        # sent: the cost of a tick follows the free slots, not the size of the backlog.
        for job in sorted(jobs, key=lambda j: dispatch_order(_candidate(j, ()))):
            wanted = room.get(job.pool, 0)
            if wanted <= 0:
                continue
            assert job.id is not None
            rows = session.exec(
                select(ChunkRow.id, ChunkRow.attempts, ChunkRow.not_before)
                .where(ChunkRow.job_id == job.id, ChunkRow.state == ChunkState.QUEUED)
                .where((col(ChunkRow.not_before).is_(None)) | (col(ChunkRow.not_before) <= now))
                .order_by(col(ChunkRow.position))
                .limit(wanted)
            ).all()
            queued = tuple(QueuedChunk(cid, n, nb) for cid, n, nb in rows if cid is not None)
            room[job.pool] = wanted - len(queued)
            if queued:
                candidates.append(_candidate(job, queued))
        return DispatchSnapshot(pools, candidates), {j.id: j for j in jobs if j.id is not None}

    def _save_dispatch(
        self,
        session: Session,
        assignments: Sequence[Assignment],
        jobs: dict[int, JobRow],
        now: float,
    ) -> list[ChunkMessage]:
        by_chunk = {a.chunk_id: a for a in assignments}
        # Compare-and-set: a chunk cancelled since the snapshot stays cancelled.
        claimed = session.execute(
            update(ChunkRow)
            .where(col(ChunkRow.id).in_(list(by_chunk)), col(ChunkRow.state) == ChunkState.QUEUED)
            .values(
                state=ChunkState.DISPATCHED,
                attempts=ChunkRow.attempts + 1,
                dispatched_at=now,
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
        ).all()
        if not claimed:
            return []
        session.execute(
            insert(AttemptRow),
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
        """Apply a batch of node events in one transaction; duplicates change nothing."""
        now = self.clock()
        outcome = IngestOutcome(frames=[])
        with Session(self.engine) as session:
            self._save_heartbeats(session, [e for e in events if e.get("kind") == "heartbeat"], now)
            chunk_events = [e for e in events if e.get("kind") != "heartbeat"]
            if chunk_events:
                self._apply_chunk_events(session, chunk_events, now, outcome)
            session.commit()
        return outcome

    def _save_heartbeats(
        self, session: Session, events: Sequence[dict[str, Any]], now: float
    ) -> None:
        latest: dict[str, NodeReport] = {}
        for event in events:
            report = NodeReport.from_dict(event["info"])
            latest[report.name] = report
        for report in latest.values():
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

    def _apply_chunk_events(
        self, session: Session, events: Sequence[dict[str, Any]], now: float, outcome: IngestOutcome
    ) -> None:
        chunk_ids = {int(e["chunk_id"]) for e in events}
        chunks = {
            c.id: c for c in session.exec(select(ChunkRow).where(col(ChunkRow.id).in_(chunk_ids)))
        }
        jobs = {
            j.id: j
            for j in session.exec(
                select(JobRow).where(col(JobRow.id).in_({c.job_id for c in chunks.values()}))
            )
        }
        attempts = {
            (a.chunk_id, a.number): a
            for a in session.exec(
                select(AttemptRow).where(
                    tuple_(col(AttemptRow.chunk_id), col(AttemptRow.number)).in_(
                        list({(int(e["chunk_id"]), int(e["attempt"])) for e in events})
                    )
                )
            )
        }
        done_frames = {
            (job_id, frame)
            for job_id, frame in session.exec(
                select(FrameResultRow.job_id, FrameResultRow.frame).where(
                    col(FrameResultRow.chunk_id).in_(chunk_ids)
                )
            )
        }
        touched: set[int] = set()
        new_results: list[dict[str, Any]] = []
        for event in events:
            chunk_id = int(event["chunk_id"])
            chunk = chunks.get(chunk_id)
            attempt_no = int(event["attempt"])
            if chunk is None or not accepts_event(
                ChunkState(chunk.state), chunk.attempts, attempt_no
            ):
                outcome.ignored += 1
                continue
            job = jobs[chunk.job_id]
            attempt = attempts.get((chunk_id, attempt_no))
            kind = event["kind"]
            node = str(event.get("node") or "")
            at = float(event.get("at") or now)
            reports = []
            if kind == "started":
                if chunk.state == ChunkState.DISPATCHED:
                    chunk.state = ChunkState.RUNNING
                    chunk.started_at = at
                chunk.node = node
                if attempt is not None:
                    attempt.state, attempt.node, attempt.started_at = AttemptState.RUNNING, node, at
            elif kind == "frame":
                reports = [FrameReport.from_dict(event["result"])]
            elif kind == "finished":
                reports = [FrameReport.from_dict(r) for r in event.get("results", ())]
                chunk.state = ChunkState.DONE
                chunk.finished_at = at
                chunk.node = node or chunk.node
                if attempt is not None:
                    attempt.state, attempt.finished_at, attempt.exit_code = (
                        AttemptState.DONE,
                        at,
                        event.get("exit_code", 0),
                    )
            elif kind == "failed":
                chunk.state = chunk_state_after_failure(
                    chunk.attempts - chunk.retry_base, job.max_attempts
                )
                chunk.node = node or chunk.node
                if chunk.state == ChunkState.FAILED:
                    chunk.finished_at = at
                if attempt is not None:
                    attempt.state = AttemptState.FAILED
                    attempt.finished_at = at
                    attempt.exit_code = event.get("exit_code")
                    attempt.error = str(event.get("error", ""))[:2000]
            else:
                outcome.ignored += 1
                continue
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
            touched.add(chunk.job_id)
            session.add(chunk)
            if attempt is not None:
                session.add(attempt)
        if new_results:
            session.execute(insert(FrameResultRow), new_results)
            outcome.frames = [FrameResultRow(**r) for r in new_results]
        if touched:
            session.flush()
            refresh_job_states(session, [jobs[j] for j in touched], now)

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


def _candidate(job: JobRow, queued: Iterable[QueuedChunk]) -> JobCandidate:
    assert job.id is not None
    return JobCandidate(job.id, job.studio_id, job.priority, job.pool, tuple(queued))
