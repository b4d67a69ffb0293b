"""Progress of jobs, counted from chunks and frame results, and their bills so far.

``load_progress`` answers "how far is this job, and what has it cost" with two grouped
queries for any number of jobs; ``load_job`` answers it for one job, with the job's row
and dependencies, in one statement (the API's hottest read). The stored job state is
written by ``refresh_job_states`` in ``scheduler/db/transitions.py``, after every
transaction that moves chunks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, bindparam, cast, func, true
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from scheduler.core.states import ChunkState
from scheduler.db import ChunkRow, FrameResultRow, JobDependency, JobRow
from scheduler.db.among import among
from scheduler.usecases.billing import EnergyTotals, totals_columns, totals_of


@dataclass(slots=True)
class JobProgress:
    frames_total: int = 0
    frames_done: int = 0
    frames_running: int = 0
    frames_failed: int = 0
    frames_queued: int = 0
    frames_cancelled: int = 0
    chunks: dict[ChunkState, int] = field(default_factory=dict)
    energy: EnergyTotals = field(default_factory=EnergyTotals)  # of the frames rendered


def _chunks_by_state(job: Any) -> Any:
    """Chunks and frames per (job, chunk state) of the jobs ``job`` picks."""
    return (
        select(
            col(ChunkRow.job_id),
            col(ChunkRow.state).label("chunk_state"),
            func.sum(ChunkRow.chunks).label("chunks"),
            func.sum(ChunkRow.frame_count).label("frames"),
        )
        .where(job(col(ChunkRow.job_id)))
        .group_by(col(ChunkRow.job_id), col(ChunkRow.state))
    )


def _done_by_chunk_state(job: Any) -> Any:
    """Frames rendered and their bills per (job, state of their chunk) of the jobs picked."""
    return (
        select(
            col(FrameResultRow.job_id), col(ChunkRow.state).label("done_state"), *totals_columns()
        )
        .join(ChunkRow, col(ChunkRow.id) == col(FrameResultRow.chunk_id))
        .where(job(col(FrameResultRow.job_id)))
        .group_by(col(FrameResultRow.job_id), col(ChunkRow.state))
    )


def _listed(job_id: Any) -> Any:
    return among(job_id, "ids")


def _one(job_id: Any) -> Any:
    return job_id == bindparam("id")


# Built once: building a statement costs more than running it for a small job.
_CHUNKS_BY_STATE = _chunks_by_state(_listed)
_DONE_BY_CHUNK_STATE = _done_by_chunk_state(_listed)

# One job's row, the ids it depends on (comma-separated), and a row per chunk state: its
# chunks and frames, and the frames of those chunks rendered with their bills.
_JOBS = JobRow.__table__  # type: ignore[attr-defined]
_JOB_NAMES = [column.name for column in _JOBS.c]
_ONE_BY_STATE = _chunks_by_state(_one).subquery()
_ONE_DONE = _done_by_chunk_state(_one).subquery()
_ONE_JOB = (
    sql_select(
        *_JOBS.c,
        sql_select(func.aggregate_strings(cast(JobDependency.depends_on, String), ","))
        .where(col(JobDependency.job_id) == _JOBS.c.id)
        .scalar_subquery(),
        *list(_ONE_BY_STATE.c)[1:],  # (without its job id)
        *list(_ONE_DONE.c)[1:],
    )
    .select_from(_JOBS)
    .outerjoin(_ONE_BY_STATE, true())
    .outerjoin(_ONE_DONE, _ONE_DONE.c.done_state == _ONE_BY_STATE.c.chunk_state)
    .where(_JOBS.c.id == bindparam("id"))
)


def load_progress(session: Session, jobs: Sequence[JobRow]) -> dict[int, JobProgress]:
    ids = [job.id for job in jobs if job.id is not None]
    if not ids:
        return {}
    by_state: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for job_id, state, chunks, frames in session.connection().execute(
        _CHUNKS_BY_STATE, {"ids": ids}
    ):
        by_state[job_id].append((state, chunks, frames))
    done: dict[int, list[tuple[str, EnergyTotals]]] = defaultdict(list)
    for job_id, state, *totals in session.connection().execute(_DONE_BY_CHUNK_STATE, {"ids": ids}):
        done[job_id].append((state, totals_of(totals)))
    return {job_id: _progress(by_state[job_id], done[job_id]) for job_id in ids}


def load_job(connection: Connection, job_id: int) -> tuple[JobRow, JobProgress, list[int]] | None:
    """One job, its progress and the jobs it depends on, in one statement: one round
    trip and one snapshot, so it needs no transaction. None if there is no such job."""
    rows = connection.execute(_ONE_JOB, {"id": job_id}).all()
    if not rows:
        return None
    n = len(_JOB_NAMES)
    # as read, like an ORM load: the database holds only what was validated going in
    job = JobRow.model_construct(**dict(zip(_JOB_NAMES, rows[0][:n], strict=True)))
    depends_on = sorted(int(d) for d in (rows[0][n] or "").split(",") if d)
    by_state = [(row[n + 1], row[n + 2], row[n + 3]) for row in rows if row[n + 1] is not None]
    done = [(row[n + 4], totals_of(row[n + 5 :])) for row in rows if row[n + 4] is not None]
    return job, _progress(by_state, done), depends_on


def _progress(
    by_state: Iterable[tuple[str, int, int]], done: Iterable[tuple[str, EnergyTotals]]
) -> JobProgress:
    """A job's progress from its chunks and frames per chunk state, less the frames those
    chunks have already finished, and its frames rendered (with their bills) per state."""
    p = JobProgress()
    frames: dict[ChunkState, int] = defaultdict(int)
    for state, chunks, count in by_state:
        p.chunks[ChunkState(state)] = chunks
        p.frames_total += count
        frames[ChunkState(state)] += count
    for state, rendered in done:
        p.frames_done += rendered.frames
        p.energy += rendered
        frames[ChunkState(state)] -= rendered.frames
    p.frames_running = frames[ChunkState.RUNNING]
    p.frames_failed = frames[ChunkState.FAILED]
    p.frames_cancelled = frames[ChunkState.CANCELLED]
    p.frames_queued = frames[ChunkState.QUEUED] + frames[ChunkState.DISPATCHED]
    return p
