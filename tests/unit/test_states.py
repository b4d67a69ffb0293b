"""A job's state from its chunks, and the chunk state machine."""

from __future__ import annotations

import pytest

from scheduler.core.states import ChunkState, JobState, can_transition, derive_job_state

Q, D, R, OK, F, C = (
    ChunkState.QUEUED,
    ChunkState.DISPATCHED,
    ChunkState.RUNNING,
    ChunkState.DONE,
    ChunkState.FAILED,
    ChunkState.CANCELLED,
)


@pytest.mark.parametrize(
    ("counts", "suspended", "cancelled", "state"),
    [
        ({Q: 3}, False, False, JobState.QUEUED),
        ({Q: 2, D: 1}, False, False, JobState.RUNNING),
        ({Q: 2, OK: 1}, False, False, JobState.RUNNING),
        ({OK: 3}, False, False, JobState.DONE),
        ({OK: 2, F: 1}, False, False, JobState.FAILED),
        ({OK: 1, F: 1, R: 1}, False, False, JobState.RUNNING),  # still trying
        ({Q: 2, R: 1}, True, False, JobState.SUSPENDED),
        ({OK: 3}, True, False, JobState.DONE),  # finished beats suspended
        ({Q: 2, OK: 1}, False, True, JobState.CANCELLED),
        ({OK: 1, C: 2}, False, True, JobState.CANCELLED),
    ],
)
def test_derive_job_state(
    counts: dict[ChunkState, int], suspended: bool, cancelled: bool, state: JobState
) -> None:
    assert derive_job_state(counts, suspended=suspended, cancelled=cancelled) == state


@pytest.mark.parametrize(
    ("current", "target", "legal"),
    [
        (Q, D, True),
        (D, R, True),
        (D, OK, True),
        (R, OK, True),
        (R, Q, True),  # retry or lost node
        (F, Q, True),  # operator retry
        (OK, Q, False),  # a done chunk never renders again
        (C, Q, True),  # operator retry of chunks the farm ended (the job was not cancelled)
        (C, R, False),
        (Q, OK, False),
    ],
)
def test_chunk_transitions(current: ChunkState, target: ChunkState, legal: bool) -> None:
    assert can_transition(current, target) is legal
