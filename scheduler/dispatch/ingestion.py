"""Ingesting node events: one batch, one transaction, idempotent by (chunk, attempt).

Whether an event counts, and what it does to its chunk, is the pure core's decision
(``chunk_state_after_event``); this module loads the chunks, applies the decisions,
and writes the changes in bulk: one statement per shape of change, not per row.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from scheduler.core.policy import (
    chunk_state_after_event,
    exceeds_failure_limit,
    retry_delay,
    vanished_attempts,
)
from scheduler.core.states import AttemptState, ChunkState
from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow, NodeRow
from scheduler.usecases.billing import FrameBiller
from scheduler.usecases.progress import end_queued_chunks, refresh_job_states
from scheduler.wire.messages import FrameReport, NodeReport, task_id_for

log = logging.getLogger(__name__)

VANISHED_GRACE_SECONDS = 2.0
_BILL_COLUMNS = ("region", "energy_method", "it_joules", "facility_joules", "cost", "co2_grams")
RetryTiming = tuple[float, float]  # (first wait, longest wait), seconds
CHUNK_EVENT_KINDS = frozenset({"started", "frame", "finished", "failed"})

_CHUNKS_OF_EVENTS = sql_select(
    col(ChunkRow.id), col(ChunkRow.job_id), col(ChunkRow.pool), col(ChunkRow.state),
    col(ChunkRow.attempts), col(ChunkRow.retry_base), col(ChunkRow.dispatched_at),
    col(JobRow.max_attempts), col(JobRow.studio_id),
).join(JobRow, col(JobRow.id) == col(ChunkRow.job_id)).where(
    col(ChunkRow.id).in_(bindparam("ids", expanding=True))
)  # fmt: skip
_FRAMES_DONE = sql_select(
    col(FrameResultRow.job_id), col(FrameResultRow.frame), col(FrameResultRow.id),
    col(FrameResultRow.attempt), col(FrameResultRow.it_joules),
).where(col(FrameResultRow.chunk_id).in_(bindparam("ids", expanding=True)))  # fmt: skip
_FAILED_FRAMES = sql_select(func.sum(ChunkRow.frame_count)).where(
    col(ChunkRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.FAILED
)
_JOBS_BY_ID = select(JobRow).where(col(JobRow.id).in_(bindparam("ids", expanding=True)))
_UPDATE_CHUNKS = update(ChunkRow)
_INSERT_RESULTS = insert(FrameResultRow)
_FRAME_TABLE = FrameResultRow.__table__  # type: ignore[attr-defined]
_RESTATE_ENERGY = (
    _FRAME_TABLE.update()
    .where(_FRAME_TABLE.c.id == bindparam("b_id"))
    .values({name: bindparam(name) for name in _BILL_COLUMNS})
)


@dataclass(slots=True)
class IngestOutcome:
    applied: int = 0
    ignored: int = 0
    finished: Counter[str] = field(default_factory=Counter)  # chunks finished, by pool
    failed_jobs: set[int] = field(default_factory=set)  # jobs with a chunk failed for good
    # Renders still going for attempts that no longer count (superseded, cancelled,
    # or brought back by Celery long after): the scheduler stops them at once.
    unwanted: list[str] = field(default_factory=list)
    # Seconds between sending an attempt and a node starting it.
    dispatch_latencies: list[float] = field(default_factory=list)


def split_events(
    events: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chunk events, heartbeats); anything malformed is in neither."""
    beats = [e for e in events if e.get("kind") == "heartbeat" and "info" in e]
    return [e for e in events if _is_chunk_event(e)], beats


def apply_chunk_events(
    session: Session,
    events: Sequence[dict[str, Any]],
    now: float,
    outcome: IngestOutcome,
    retry: RetryTiming,
    biller: FrameBiller,
) -> None:
    """Apply chunk events in order; events of non-current attempts are ignored."""
    chunk_ids = {int(e["chunk_id"]) for e in events}
    chunks: dict[int, _ChunkView] = {}
    max_attempts: dict[int, int] = {}
    for cid, job_id, pool, state, attempts, retry_base, sent, allowed, studio in session.execute(
        _CHUNKS_OF_EVENTS, {"ids": list(chunk_ids)}
    ):
        chunks[cid] = _ChunkView(
            cid, job_id, studio, pool, ChunkState(state), attempts, retry_base, sent
        )
        max_attempts[job_id] = allowed
    # (job, frame) -> (row id, attempt, IT joules) of the frames already recorded.
    done_frames: dict[tuple[int, int], tuple[int | None, int, float | None]] = {
        (job_id, frame): (row_id, attempt, joules)
        for job_id, frame, row_id, attempt, joules in session.execute(
            _FRAMES_DONE, {"ids": list(chunk_ids)}
        )
    }
    restated: list[dict[str, Any]] = []  # recorded frames whose energy "finished" completes
    attempt_changes: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
    pending: dict[tuple[int, int], dict[str, Any]] = {}  # frame rows to insert
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
            if kind in ("started", "frame"):  # a render the farm no longer wants
                outcome.unwanted.append(task_id_for(int(event["chunk_id"]), attempt_no))
            continue
        node = str(event.get("node") or "")
        at = float(event.get("at") or now)
        attempt = attempt_changes[(chunk.id, attempt_no)]
        reports: list[FrameReport] = []
        region = str(event.get("region") or "")[:64]
        if kind == "started":
            if chunk.state != state:
                chunk.changes["started_at"] = at
                outcome.dispatch_latencies.append(max(0.0, at - (chunk.dispatched_at or at)))
            chunk.changes["node"] = node
            attempt.update(state=AttemptState.RUNNING, node=node, started_at=at)
        elif kind == "frame":
            reports = _reports([event.get("result")])
        elif kind in ("finished", "failed"):
            if chunk.state == ChunkState.DISPATCHED:  # ended before "started" was due
                started = float(event.get("started_at") or at)
                chunk.changes["started_at"] = started
                attempt["started_at"] = started
                outcome.dispatch_latencies.append(max(0.0, started - (chunk.dispatched_at or at)))
            attempt.update(node=node, finished_at=at, exit_code=event.get("exit_code"))
            chunk.changes["node"] = node
            if kind == "finished":
                reports = _reports(event.get("results") or ())
                chunk.changes["finished_at"] = at
                attempt["state"] = AttemptState.DONE
                attempt["energy_joules"] = _energy_of(reports)
            else:
                if state == ChunkState.FAILED:
                    chunk.changes["finished_at"] = at
                    outcome.failed_jobs.add(chunk.job_id)
                else:  # retried, after a pause that doubles with each failure
                    made = chunk.attempts - chunk.retry_base
                    chunk.changes["not_before"] = now + retry_delay(made, *retry)
                attempt.update(
                    state=AttemptState.FAILED,
                    error=str(event.get("error"))[:2000],
                    energy_joules=_number_or_none(event.get("energy_joules")),
                )
        if kind in ("finished", "failed"):
            outcome.finished[chunk.pool] += 1
        chunk.state = state
        chunk.changes["state"] = state
        for report in reports:
            key = (chunk.job_id, report.frame)
            known = done_frames.get(key)
            if known is not None:
                # The last frame's energy grows in "finished" by the renderer's exit.
                row_id, by_attempt, joules = known
                if by_attempt == attempt_no and report.energy_joules != joules:
                    bill = biller.bill(session, region, report.energy_joules, at, now)
                    bill.pop("day")
                    bill["energy_method"] = _method_of(report)
                    if row_id is None:  # recorded earlier in this very batch
                        pending[key].update(bill)
                    else:
                        restated.append({"b_id": row_id, **bill})
                continue
            done_frames[key] = (None, attempt_no, report.energy_joules)
            pending[key] = {
                "job_id": chunk.job_id,
                "studio_id": chunk.studio_id,
                "chunk_id": chunk.id,
                "frame": report.frame,
                "attempt": attempt_no,
                "node": node,
                "pool": chunk.pool,
                "output": report.output,
                "render_seconds": report.render_seconds,
                "cpu_seconds": report.cpu_seconds,
                "finished_at": at,
                "energy_method": _method_of(report),
                **biller.bill(session, region, report.energy_joules, at, now),
            }
        outcome.applied += 1
    _save_changes(session, chunks.values(), attempt_changes)
    if pending:
        session.execute(_INSERT_RESULTS, list(pending.values()))
    if restated:
        session.execute(_RESTATE_ENERGY, restated)
    _stop_failing_jobs(session, outcome.failed_jobs)
    touched = {c.job_id for c in chunks.values() if c.changes}
    if touched:
        jobs = session.exec(_JOBS_BY_ID, params={"ids": list(touched)}).all()
        refresh_job_states(session, jobs, now)


def _reports(payloads: Iterable[Any]) -> list[FrameReport]:
    """The frame reports of an event; a malformed one is logged and left out."""
    reports = []
    for payload in payloads:
        try:
            report = FrameReport.from_dict(payload)
        except (TypeError, ValueError):
            log.error("ignoring a malformed frame report: %r", payload)
            continue
        joules = _number_or_none(report.energy_joules)
        if joules is not None and not (0.0 <= joules < math.inf):
            log.error("ignoring the energy of a frame report: %r", payload)
            joules = None
        reports.append(dataclasses.replace(report, energy_joules=joules))
    return reports


def _energy_of(reports: Sequence[FrameReport]) -> float | None:
    """An attempt's energy: its frames' sum, if every frame was metered."""
    if not reports or any(r.energy_joules is None for r in reports):
        return None
    return sum(r.energy_joules or 0.0 for r in reports)


def _method_of(report: FrameReport) -> str | None:
    return str(report.energy_method)[:32] if report.energy_joules is not None else None


def _number_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _stop_failing_jobs(session: Session, job_ids: set[int]) -> None:
    """Jobs past their limit of failed frames dispatch nothing more; queued chunks end."""
    for job_id in job_ids:
        job = session.get(JobRow, job_id)
        if job is None or job.max_failed_frames is None:
            continue
        failed = session.execute(_FAILED_FRAMES, {"job": job_id}).scalar_one() or 0
        if exceeds_failure_limit(failed, job.max_failed_frames):
            end_queued_chunks(session, job_id)
            job.message = (
                f"stopped: {failed} frame(s) failed every attempt, "
                f"the job's limit is {job.max_failed_frames}"
            )
            session.add(job)


def _save_changes(
    session: Session,
    chunks: Iterable[_ChunkView],
    attempt_changes: dict[tuple[int, int], dict[str, Any]],
) -> None:
    """Bulk updates, one statement per shape of change."""
    _update_by_key(session, [{"id": c.id, **c.changes} for c in chunks if c.changes])
    shapes: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for (chunk_id, number), values in attempt_changes.items():
        if values:
            shapes[frozenset(values)].append({"b_chunk": chunk_id, "b_number": number, **values})
    for columns, rows in shapes.items():
        session.execute(_attempt_update(columns), rows)


def save_heartbeats(session: Session, events: Sequence[dict[str, Any]], now: float) -> None:
    """Register or refresh each reporting node; requeue attempts it no longer holds."""
    latest: dict[str, tuple[dict[str, Any], NodeReport]] = {}
    for event in events:
        try:
            report = NodeReport.from_dict(event["info"])
        except (TypeError, ValueError):
            log.error("ignoring a malformed heartbeat: %r", event)
            continue
        latest[report.name] = (event, report)
    for event, report in latest.values():
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
        node.region = str(report.region)[:64]
        node.energy_method = str(report.energy_method)[:32] if report.energy_method else None
        node.power_watts = _number_or_none(report.power_watts) or 0.0
        node.state = "online"
        node.last_heartbeat = now
        session.add(node)
        if "tasks" in event and "at" in event:
            _requeue_vanished(session, report.name, set(event["tasks"]), event["at"])


def _requeue_vanished(session: Session, node: str, listed: set[str], reported_at: float) -> None:
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
    studio_id: int
    pool: str
    state: ChunkState
    attempts: int
    retry_base: int
    dispatched_at: float | None
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
