"""The job, chunk and attempt state machines and their legal transitions.

Chunk::

    queued --dispatch--> dispatched --started--> running --done--> done
      ^                      |                      |
      |                      +------(failed)--------+--> failed (attempts used up)
      +----- retry / requeue (lost message, retry, resume, operator retry) ---+
    queued | dispatched | running --cancel--> cancelled

Attempt: dispatched -> running -> done | failed; dispatched | running -> superseded
(a newer attempt replaced it) or cancelled.

A job's state is derived from its chunks plus two operator flags (suspended,
cancelled); ``derive_job_state`` is the one place that decides it. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ChunkState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (ChunkState.DONE, ChunkState.FAILED, ChunkState.CANCELLED)

    @property
    def is_active(self) -> bool:
        """Holds a render slot or a place in the broker queue."""
        return self in (ChunkState.DISPATCHED, ChunkState.RUNNING)


ACTIVE_CHUNK_STATES = (ChunkState.DISPATCHED, ChunkState.RUNNING)


class AttemptState(StrEnum):
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


CHUNK_TRANSITIONS: Mapping[ChunkState, frozenset[ChunkState]] = {
    ChunkState.QUEUED: frozenset({ChunkState.DISPATCHED, ChunkState.CANCELLED}),
    ChunkState.DISPATCHED: frozenset(
        {
            ChunkState.RUNNING,
            ChunkState.DONE,  # a fast chunk's "started" may arrive after its "done"
            ChunkState.FAILED,
            ChunkState.QUEUED,
            ChunkState.CANCELLED,
        }
    ),
    ChunkState.RUNNING: frozenset(
        {ChunkState.DONE, ChunkState.FAILED, ChunkState.QUEUED, ChunkState.CANCELLED}
    ),
    ChunkState.DONE: frozenset(),
    ChunkState.FAILED: frozenset({ChunkState.QUEUED}),
    ChunkState.CANCELLED: frozenset(),
}


def can_transition(current: ChunkState, target: ChunkState) -> bool:
    return target in CHUNK_TRANSITIONS[current]


def derive_job_state(
    chunk_counts: Mapping[ChunkState, int], *, suspended: bool, cancelled: bool
) -> JobState:
    """A job's state from how many of its chunks are in each state.

    Only which states are present matters, so a count of 1 per present state (what
    the store can find with index seeks) gives the same answer as full counts.
    """
    if cancelled:
        return JobState.CANCELLED
    count = {state: chunk_counts.get(state, 0) for state in ChunkState}
    total = sum(count.values())
    unfinished = count[ChunkState.QUEUED] + count[ChunkState.DISPATCHED] + count[ChunkState.RUNNING]
    if total and count[ChunkState.DONE] == total:
        return JobState.DONE
    if total and not unfinished:
        # Ended without every frame: failed chunks, or chunks the farm ended (a job
        # past its failure limit, or whose dependency failed).
        return JobState.FAILED
    if suspended:
        return JobState.SUSPENDED
    if count[ChunkState.DISPATCHED] or count[ChunkState.RUNNING] or count[ChunkState.DONE]:
        return JobState.RUNNING
    return JobState.QUEUED
