"""Dependencies: job and frame gates, and what a failed dependency does."""

from __future__ import annotations

import pytest

from scheduler.core.dependencies import (
    DependencyMode,
    Gate,
    OnDependencyFailure,
    dependency_gate,
    frames_ready,
)
from scheduler.core.states import JobState

JOB, FRAME = DependencyMode.JOB, DependencyMode.FRAME
WAIT, FAIL = OnDependencyFailure.WAIT, OnDependencyFailure.FAIL
D, R, F, C = JobState.DONE, JobState.RUNNING, JobState.FAILED, JobState.CANCELLED


@pytest.mark.parametrize(
    ("states", "mode", "on_failure", "gate", "words"),
    [
        ({1: D, 2: D}, JOB, WAIT, Gate.OPEN, None),
        ({1: D, 2: R}, JOB, WAIT, Gate.WAIT, "waiting for job(s) [2]"),
        ({1: R}, FRAME, WAIT, Gate.OPEN, None),  # frames are gated one by one
        ({1: F, 2: D}, JOB, WAIT, Gate.WAIT, "job 1 is failed; retry it"),
        ({1: C}, FRAME, WAIT, Gate.WAIT, "job 1 is cancelled"),
        ({1: F}, JOB, FAIL, Gate.FAIL, "did not finish: job 1 is failed"),
    ],
)
def test_dependency_gate(
    states: dict[int, JobState],
    mode: DependencyMode,
    on_failure: OnDependencyFailure,
    gate: Gate,
    words: str | None,
) -> None:
    decision = dependency_gate(states, mode, on_failure)
    assert decision.gate == gate
    assert (decision.message is None) if words is None else (words in (decision.message or ""))


@pytest.mark.parametrize(
    ("frames", "ready"),
    [([1, 2], True), ([3], False), ([100], True), ([2, 3], False), ([7], True)],
)
def test_frames_ready(frames: list[int], ready: bool) -> None:
    has = {10: range(1, 11), 20: [1, 2, 3, 4]}
    done = {10: {1, 2, 3, 7}, 20: {1, 2}}  # frame 3 is done in 10, not yet in 20
    assert frames_ready(frames, has, done) is ready
