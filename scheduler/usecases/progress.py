"""Progress of jobs, counted from chunks and frame results, and the stored job state.

``load_progress`` answers "how far is this job" with three grouped queries for any
number of jobs. ``refresh_job_states`` writes the state that ``derive_job_state``
(the pure core) decides, with its timestamps; the service and the scheduler call it
for the jobs a transaction touched, so ``jobs.state`` is always current for listing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from scheduler.core.states import ChunkState, JobState, derive_job_state
from scheduler.db import ChunkRow, FrameResultRow, JobRow


@dataclass(slots=True)
class JobProgress:
    frames_total: int = 0
    frames_done: int = 0
    frames_running: int = 0
    frames_failed: int = 0
    frames_queued: int = 0
    frames_cancelled: int = 0
    chunks: dict[ChunkState, int] = field(default_factory=dict)


def load_progress(session: Session, jobs: Sequence[JobRow]) -> dict[int, JobProgress]:
    ids = [job.id for job in jobs if job.id is not None]
    progress: dict[int, JobProgress] = {job_id: JobProgress() for job_id in ids}
    if not ids:
        return progress
    # frames per chunk state, less the frames those chunks have already finished
    frames_by_state: dict[int, dict[ChunkState, int]] = defaultdict(lambda: defaultdict(int))
    for job_id, state, chunks, frames in session.exec(
        select(
            ChunkRow.job_id,
            ChunkRow.state,
            func.count(),
            func.sum(ChunkRow.frame_count),
        )
        .where(col(ChunkRow.job_id).in_(ids))
        .group_by(col(ChunkRow.job_id), col(ChunkRow.state))
    ):
        progress[job_id].chunks[ChunkState(state)] = chunks
        progress[job_id].frames_total += frames
        frames_by_state[job_id][ChunkState(state)] += frames
    for job_id, state, done in session.exec(
        select(FrameResultRow.job_id, ChunkRow.state, func.count())
        .join(ChunkRow, col(ChunkRow.id) == col(FrameResultRow.chunk_id))
        .where(col(FrameResultRow.job_id).in_(ids))
        .group_by(col(FrameResultRow.job_id), col(ChunkRow.state))
    ):
        progress[job_id].frames_done += done
        frames_by_state[job_id][ChunkState(state)] -= done
    for job_id, by_state in frames_by_state.items():
        p = progress[job_id]
        p.frames_running = by_state[ChunkState.RUNNING]
        p.frames_failed = by_state[ChunkState.FAILED]
        p.frames_cancelled = by_state[ChunkState.CANCELLED]
        p.frames_queued = by_state[ChunkState.QUEUED] + by_state[ChunkState.DISPATCHED]
    return progress


def chunk_states_present(session: Session, job_id: int) -> dict[ChunkState, int]:
    """Which chunk states a job has (1 each), from one index seek per state.

    Enough for ``derive_job_state``, and independent of the job's size: counting
    every chunk of a 100,000-frame job after each batch of events would not be.
    """
    row = session.execute(_STATES_PRESENT, {"job": job_id}).one()
    return {state: 1 for state, present in zip(ChunkState, row, strict=True) if present}


_STATES_PRESENT = sql_select(
    *(
        select(ChunkRow.id)
        .where(col(ChunkRow.job_id) == bindparam("job"), ChunkRow.state == state)
        .limit(1)
        .exists()
        .label(state.value)
        for state in ChunkState
    )
)


def end_queued_chunks(session: Session, job_id: int) -> None:
    """The farm gives up on a job's chunks that never started (failure limit, failed
    dependency); ``derive_job_state`` then makes the job failed once nothing runs."""
    session.execute(_END_QUEUED, {"job": job_id})


_END_QUEUED = (
    update(ChunkRow)
    .where(col(ChunkRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.QUEUED)
    .values(state=ChunkState.CANCELLED)
)


def refresh_job_states(session: Session, jobs: Sequence[JobRow], now: float) -> None:
    """Store each job's derived state; stamp when it started and finished."""
    for job in jobs:
        assert job.id is not None
        state = derive_job_state(
            chunk_states_present(session, job.id), suspended=job.suspended, cancelled=job.cancelled
        )
        if state == job.state:
            continue
        if state == JobState.RUNNING and job.started_at is None:
            job.started_at = now
        if state.is_final:
            job.finished_at = now
            if state == JobState.FAILED and not job.message:
                failed = load_progress(session, [job])[job.id].frames_failed
                job.message = f"{failed} frame(s) failed every attempt"
        else:
            job.finished_at = None
        job.state = state
        session.add(job)
