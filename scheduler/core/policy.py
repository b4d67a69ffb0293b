"""Dispatch policy: which chunks go to which pool queue now, and what a failure means.

Everything here is a plain function over a snapshot and ``now`` (seconds, any epoch):
the service layer loads the snapshot, calls the policy, saves the decisions, and only
then enqueues. Nothing here reads a clock, a database or a broker.

Just-in-time dispatch: a pool's queue is kept about as deep as its free render slots
plus a small buffer, so a priority change, a suspend or an urgent job takes effect on
the next tick instead of after a backlog drains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.states import ChunkState


@dataclass(frozen=True, slots=True)
class PoolCapacity:
    """Render slots of a pool's live nodes, and chunks already holding them."""

    pool: str
    live_slots: int
    active_chunks: int  # dispatched (in the broker or a worker's hands) + running
    buffer: int = 0

    @property
    def free(self) -> int:
        if self.live_slots <= 0:
            return 0
        return max(0, self.live_slots + self.buffer - self.active_chunks)


@dataclass(frozen=True, slots=True)
class QueuedChunk:
    chunk_id: int
    attempts: int  # attempts made so far
    not_before: float | None = None  # a retry waits until then


@dataclass(frozen=True, slots=True)
class JobCandidate:
    """A job that may dispatch, with its next queued chunks in frame order."""

    job_id: int  # ids grow with submission: lower is older
    studio_id: int
    priority: int
    pool: str
    queued: Sequence[QueuedChunk] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class DispatchSnapshot:
    pools: Mapping[str, PoolCapacity]
    jobs: Sequence[JobCandidate]


@dataclass(frozen=True, slots=True)
class Assignment:
    chunk_id: int
    job_id: int
    pool: str
    attempt: int  # the number of the attempt this dispatch starts (1-based)


def queue_buffer(finished: int, window: float, tick: float, minimum: int, maximum: int) -> int:
    """How many messages a pool's queue holds beyond its free slots.

    Enough to keep the pool busy while one dispatch round trip (a few ticks) passes:
    the pool's recent completion rate (``finished`` chunks in ``window`` seconds)
    times four ticks, within [minimum, maximum]. Renders of minutes finish a few
    chunks a second across a whole farm, so the buffer stays at its small minimum
    and a priority change takes effect on the next tick; chunks of milliseconds
    (benchmarks, trivial tasks) get a deeper queue instead of idle slots.
    """
    if window <= 0:
        return minimum
    wanted = math.ceil(finished / window * tick * 4)
    return max(minimum, min(maximum, wanted))


def dispatch_order(job: JobCandidate) -> tuple[int, int]:
    """Higher priority first, then the older submission."""
    return (-job.priority, job.job_id)


def plan_dispatch(snapshot: DispatchSnapshot, now: float) -> list[Assignment]:
    """The chunks to send now, in the order they should be sent."""
    free = {name: pool.free for name, pool in snapshot.pools.items()}
    assignments: list[Assignment] = []
    for job in sorted(snapshot.jobs, key=dispatch_order):
        room = free.get(job.pool, 0)
        for chunk in job.queued:
            if room <= 0:
                break
            if chunk.not_before is not None and chunk.not_before > now:
                continue
            assignments.append(Assignment(chunk.chunk_id, job.job_id, job.pool, chunk.attempts + 1))
            room -= 1
        if job.pool in free:
            free[job.pool] = room
    return assignments


def chunk_state_after_failure(attempts_made: int, max_attempts: int) -> ChunkState:
    """Retry (back to queued) while attempts remain, else the chunk has failed."""
    return ChunkState.QUEUED if attempts_made < max_attempts else ChunkState.FAILED


def chunk_state_after_event(
    state: ChunkState,
    current_attempt: int,
    event_attempt: int,
    kind: str,
    attempts_since_retry: int,
    max_attempts: int,
) -> ChunkState | None:
    """The chunk's state once a node event is applied, or None to ignore the event."""
    if not accepts_event(state, current_attempt, event_attempt):
        return None
    if kind == "started":
        return ChunkState.RUNNING if state == ChunkState.DISPATCHED else state
    if kind == "frame":
        return state
    if kind == "finished":
        return ChunkState.DONE
    if kind == "failed":
        return chunk_state_after_failure(attempts_since_retry, max_attempts)
    return None


def accepts_event(state: ChunkState, current_attempt: int, event_attempt: int) -> bool:
    """Events count only for the chunk's current attempt while it is dispatched or running.

    A duplicate, a late event from a superseded attempt (the chunk was requeued, or
    re-dispatched under a newer number), or one for a cancelled chunk changes nothing:
    this is what makes ingestion idempotent.
    """
    return event_attempt == current_attempt and state.is_active


def is_node_lost(last_heartbeat: float, now: float, timeout: float) -> bool:
    return now - last_heartbeat > timeout


def unclaimed_to_resend(
    dispatched: Iterable[tuple[int, float]], broker_depth: int, now: float, after: float
) -> list[int]:
    """Chunks sent but never claimed, when the broker has lost their messages.

    ``dispatched`` holds (chunk id, sent at) of chunks dispatched but not started. If
    the pool's broker queue still holds messages, workers are just slow to claim
    them; if it is empty, anything unclaimed for longer than ``after`` seconds was
    lost (a Redis restart or flush) and must be sent again as a new attempt.
    """
    if broker_depth > 0:
        return []
    return [chunk_id for chunk_id, sent_at in dispatched if now - sent_at > after]


def vanished_attempts(
    running: Iterable[tuple[int, str, float]], listed: set[str], reported_at: float, grace: float
) -> list[int]:
    """Chunks whose running attempt the node no longer holds, by its own heartbeat.

    ``running`` holds (chunk id, task id, started at) of the node's running chunks;
    ``listed`` the task ids the node reported holding at ``reported_at`` (its clock,
    like ``started at``). A node lists a task from before its render starts until
    after its last event was sent, so an attempt missing from a later report ended
    without its events reaching us (lost in a broker flush, or the node restarted):
    it must render again.
    """
    return [
        chunk_id
        for chunk_id, task_id, started_at in running
        if task_id not in listed and started_at < reported_at - grace
    ]
