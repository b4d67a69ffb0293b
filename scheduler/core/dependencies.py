"""Dependencies between jobs: when a job, or a frame of it, may render.

A job may wait for other jobs of its studio:

- ``job`` mode: it starts when every job it depends on is done;
- ``frame`` mode: frame N renders once frame N of every job it depends on is done
  (a frame that a dependency does not have waits for nothing).

If a job it depends on fails or is cancelled, the job either waits, visibly, until
that job is retried (``wait``), or fails with the reason (``fail``). Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from scheduler.core.states import JobState

WAITING = "waiting"  # how the message of a job held by its dependencies begins


class DependencyMode(StrEnum):
    JOB = "job"
    FRAME = "frame"


class OnDependencyFailure(StrEnum):
    WAIT = "wait"
    FAIL = "fail"


class Gate(StrEnum):
    OPEN = "open"  # dispatch (in frame mode: the frames whose dependencies are done)
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class GateDecision:
    gate: Gate
    message: str | None = None


def dependency_gate(
    states: Mapping[int, JobState], mode: DependencyMode, on_failure: OnDependencyFailure
) -> GateDecision:
    """What the jobs a job depends on allow it to do now."""
    broken = sorted(j for j, s in states.items() if s in (JobState.FAILED, JobState.CANCELLED))
    if broken:
        names = ", ".join(f"job {j} is {states[j]}" for j in broken)
        if on_failure == OnDependencyFailure.FAIL:
            return GateDecision(Gate.FAIL, f"a job it depends on did not finish: {names}")
        return GateDecision(Gate.WAIT, f"{WAITING}: {names}; retry it, or cancel this job")
    if mode == DependencyMode.FRAME:
        return GateDecision(Gate.OPEN)
    waiting = sorted(j for j, s in states.items() if s != JobState.DONE)
    if waiting:
        return GateDecision(Gate.WAIT, f"{WAITING} for job(s) {waiting} to finish")
    return GateDecision(Gate.OPEN)


def frames_ready(
    frames: Iterable[int],
    dependency_frames: Mapping[int, Collection[int]],
    dependency_done: Mapping[int, Collection[int]],
) -> bool:
    """Frame mode: every frame is done in every dependency that has that frame."""
    return all(
        frame not in dependency_frames[dep] or frame in dependency_done.get(dep, ())
        for frame in frames
        for dep in dependency_frames
    )
