"""Progress of jobs, counted from chunks and frame results, and their bills so far.

``load_progress`` answers "how far is this job, and what has it cost" with two grouped
queries for any number of jobs. The stored job state is written by ``refresh_job_states`` in
``scheduler/db/transitions.py``, after every transaction that moves chunks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, func
from sqlmodel import Session, col, select

from scheduler.core.states import ChunkState
from scheduler.db import ChunkRow, FrameResultRow, JobRow
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


# Built once: building a statement costs more than running it for a small job.
_CHUNKS_BY_STATE = (  # chunks and frames per chunk state
    select(
        ChunkRow.job_id, ChunkRow.state, func.sum(ChunkRow.chunks), func.sum(ChunkRow.frame_count)
    )
    .where(col(ChunkRow.job_id).in_(bindparam("ids", expanding=True)))
    .group_by(col(ChunkRow.job_id), col(ChunkRow.state))
)
_DONE_BY_CHUNK_STATE = (  # frames rendered and their bills, by the state of their chunk
    select(FrameResultRow.job_id, ChunkRow.state, *totals_columns())
    .join(ChunkRow, col(ChunkRow.id) == col(FrameResultRow.chunk_id))
    .where(col(FrameResultRow.job_id).in_(bindparam("ids", expanding=True)))
    .group_by(col(FrameResultRow.job_id), col(ChunkRow.state))
)


def load_progress(session: Session, jobs: Sequence[JobRow]) -> dict[int, JobProgress]:
    ids = [job.id for job in jobs if job.id is not None]
    progress: dict[int, JobProgress] = {job_id: JobProgress() for job_id in ids}
    if not ids:
        return progress
    # frames per chunk state, less the frames those chunks have already finished
    frames_by_state: dict[int, dict[ChunkState, int]] = defaultdict(lambda: defaultdict(int))
    for job_id, state, chunks, frames in session.connection().execute(
        _CHUNKS_BY_STATE, {"ids": ids}
    ):
        progress[job_id].chunks[ChunkState(state)] = chunks
        progress[job_id].frames_total += frames
        frames_by_state[job_id][ChunkState(state)] += frames
    for job_id, state, *totals in session.connection().execute(_DONE_BY_CHUNK_STATE, {"ids": ids}):
        rendered = totals_of(totals)
        progress[job_id].frames_done += rendered.frames
        progress[job_id].energy += rendered
        frames_by_state[job_id][ChunkState(state)] -= rendered.frames
    for job_id, by_state in frames_by_state.items():
        p = progress[job_id]
        p.frames_running = by_state[ChunkState.RUNNING]
        p.frames_failed = by_state[ChunkState.FAILED]
        p.frames_cancelled = by_state[ChunkState.CANCELLED]
        p.frames_queued = by_state[ChunkState.QUEUED] + by_state[ChunkState.DISPATCHED]
    return progress
