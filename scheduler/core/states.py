"""The job, chunk and attempt state machines: the one truth about which moves are legal.

Chunk::

    queued --dispatch--> dispatched --started--> running --done--> done
      ^                      |                      |
      |                      +------(failed)--------+--> failed (attempts used up)
      +-- retry after a failure, lost node, lost message -+
    queued | dispatched | running --cancel--> cancelled
    failed | cancelled --operator retry--> queued  (only in a job the studio did not
                                                     cancel: the farm ends the queued
                                                     chunks of a job past its failure
                                                     limit or whose dependency failed)

Attempt: dispatched -> running -> done | failed; dispatched | running -> superseded
(a newer attempt replaced it) or cancelled.

A job's state is derived from its chunks plus two operator flags (suspended,
cancelled); ``derive_job_state`` is the one place that decides it, and
``JOB_TRANSITIONS`` says which derived changes may be stored.

The state writers (``scheduler/db/transitions.py``) update only rows whose current
state these tables let move to the target (compare-and-set), so concurrent
transactions can never store a move the tables forbid. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)


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
    ChunkState.FAILED: frozenset({ChunkState.QUEUED}),  # operator retry
    ChunkState.CANCELLED: frozenset({ChunkState.QUEUED}),  # operator retry, job not cancelled
}

ATTEMPT_TRANSITIONS: Mapping[AttemptState, frozenset[AttemptState]] = {
    AttemptState.DISPATCHED: frozenset(
        {
            AttemptState.RUNNING,
            AttemptState.DONE,  # ended before its "started" was ingested
            AttemptState.FAILED,
            AttemptState.SUPERSEDED,
            AttemptState.CANCELLED,
        }
    ),
    AttemptState.RUNNING: frozenset(
        {AttemptState.DONE, AttemptState.FAILED, AttemptState.SUPERSEDED, AttemptState.CANCELLED}
    ),
    AttemptState.DONE: frozenset(),
    AttemptState.FAILED: frozenset(),
    AttemptState.SUPERSEDED: frozenset(),
    AttemptState.CANCELLED: frozenset(),
}

_UNFINISHED_JOB = (JobState.QUEUED, JobState.RUNNING, JobState.SUSPENDED)
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # Any unfinished state to any other: a lost node takes a running job back to
    # queued, and the last chunk may finish in the tick that dispatched it.
    **{
        state: frozenset(JobState) - {state}
        for state in (JobState.QUEUED, JobState.RUNNING, JobState.SUSPENDED)
    },
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(_UNFINISHED_JOB),  # operator retry
    JobState.CANCELLED: frozenset(),
}


def can_transition(current: ChunkState, target: ChunkState) -> bool:
    return target in CHUNK_TRANSITIONS[current]


def sources_of(table: Mapping[S, frozenset[S]], target: S) -> frozenset[S]:
    """Every state the table lets move to ``target``."""
    return frozenset(state for state, targets in table.items() if target in targets)


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


def overall_state(states: Sequence[JobState]) -> JobState:
    """The state of jobs submitted as one (an OpenJD template's steps): failed once one
    failed (its dependants wait, visibly); once all are final, cancelled if one was,
    else done; running while one runs; suspended if every unfinished one is; else
    queued."""
    if JobState.FAILED in states:
        return JobState.FAILED
    if all(state.is_final for state in states):
        return JobState.CANCELLED if JobState.CANCELLED in states else JobState.DONE
    if JobState.RUNNING in states:
        return JobState.RUNNING
    unfinished = [state for state in states if not state.is_final]
    if all(state == JobState.SUSPENDED for state in unfinished):
        return JobState.SUSPENDED
    return JobState.QUEUED
