"""Dispatch policy: which chunks go to which node now, and what a failure means.

Order of dispatch: fair share between studios (``scheduler.core.fairshare``), then
within a studio priority, then submission order.

Everything here is a plain function over a snapshot and ``now`` (seconds, any epoch):
the service layer loads the snapshot, calls the policy, saves the decisions, and only
then enqueues. Nothing here reads a clock, a database or a broker.

Just-in-time dispatch: a node's queue is kept about as deep as its free render slots
plus a small buffer, so a priority change, a suspend or an urgent job takes effect on
the next tick instead of after a backlog drains.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.fairshare import (
    NO_TERMS,
    PoolTerms,
    StudioShare,
    TurnOrder,
    share_of,
    starting_passes,
)
from scheduler.core.placement import NO_REQUIREMENTS, Placement, Requirements, Room
from scheduler.core.states import ChunkState


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
    limits: tuple[str, ...] = ()  # named farm-wide limits each of its chunks takes one of
    needs: Requirements = NO_REQUIREMENTS  # what a node must have to render it
    avoid: frozenset[str] = frozenset()  # nodes on which it failed too often
    prefer: tuple[str, ...] = ()  # regions, best first, for its placement policy (siting.py)


@dataclass(frozen=True, slots=True)
class DispatchSnapshot:
    jobs: Sequence[JobCandidate]
    # Chunks dispatched or running, by (studio id, pool).
    active: Mapping[tuple[int, str], int] = field(default_factory=dict)
    # Studios' fair-share weights (default 1), and operators' terms by (studio, pool).
    weights: Mapping[int, float] = field(default_factory=dict)
    terms: Mapping[tuple[int, str], PoolTerms] = field(default_factory=dict)
    # Stride passes by (studio, pool), carried from tick to tick (see fairshare.py).
    passes: Mapping[tuple[int, str], float] = field(default_factory=dict)
    # Named farm-wide limits (licences): capacity, and chunks holding one now.
    limits: Mapping[str, int] = field(default_factory=dict)
    limits_used: Mapping[str, int] = field(default_factory=dict)
    # Live nodes with their room: every chunk is placed on one of them, and a pool's
    # room is the room of its nodes (no nodes, nothing dispatches).
    room: Room = field(default_factory=lambda: Room.of(()))


@dataclass(frozen=True, slots=True)
class Assignment:
    chunk_id: int
    job_id: int
    pool: str
    attempt: int  # the number of the attempt this dispatch starts (1-based)
    studio_id: int
    node: str  # the node whose queue it goes to


def queue_buffer(per_second: float, tick: float, minimum: int, maximum: int) -> int:
    """How many messages a pool's queues hold beyond its free slots (shared by its nodes).

    Enough to keep the pool busy while one dispatch round trip (a few ticks) passes:
    the pool's recent completion rate (chunks a second, ``pace.CompletionRate``) times
    four ticks, within
    [minimum, maximum]. Four ticks, because a chunk counts against its node's queue
    until its "finished" is ingested: what nodes rendered in the last turn or two is
    still counted, besides what must wait for the next dispatch. Renders of minutes
    finish a few chunks a second across a whole farm, so the buffer stays at its small
    minimum and a priority change takes effect on the next tick; chunks of
    milliseconds get a deeper queue instead of idle slots: still at most four ticks
    of work, so a priority change is felt as soon.
    """
    wanted = math.ceil(per_second * tick * 4)
    return max(minimum, min(maximum, wanted))


def dispatch_order(job: JobCandidate) -> tuple[int, int]:
    """Higher priority first, then the older submission."""
    return (-job.priority, job.job_id)


def plan_dispatch(snapshot: DispatchSnapshot, now: float) -> list[Assignment]:
    """The chunks to send now, in the order they should be sent.

    Each pool's free room goes out one slot at a time: the studio whose turn it is
    (``next_studio``: minimums, then weighted fair share, within maximums) sends its
    next chunk, from its highest-priority, oldest job first, if the job's named
    limits have room.
    """
    assignments: list[Assignment] = []
    used = dict(snapshot.limits_used)
    placement = Placement(snapshot.room)
    for pool, studios in _studios_by_pool(snapshot).items():
        room = placement.room(pool)
        if room <= 0:
            continue
        held = {studio: snapshot.active.get((studio, pool), 0) for studio in studios}
        turns = TurnOrder(
            studios,
            held,
            _shares(snapshot, pool, studios),
            sum(held.values()) + room,
            _passes(snapshot, pool, studios),
        )
        ready = {studio: _ready_chunks(jobs, now) for studio, jobs in studios.items()}
        unplaced: set[int] = set()  # jobs no node with room can take this tick
        while room > 0 and (studio := turns.next()) is not None:
            picked = next(ready[studio], None)
            if picked is None:
                turns.leave(studio)
                continue
            job, chunk = picked
            if job.job_id in unplaced or not fits_limits(job.limits, snapshot.limits, used):
                continue  # this job waits (a node, a licence); the studio's others may go
            node = placement.place(pool, job.needs, job.avoid, job.prefer)
            if node is None:
                unplaced.add(job.job_id)
                continue
            for name in job.limits:
                used[name] = used.get(name, 0) + 1
            assignments.append(
                Assignment(chunk.chunk_id, job.job_id, pool, chunk.attempts + 1, studio, node)
            )
            turns.served(studio)
            room -= 1
    return assignments


def fits_limits(
    wanted: Sequence[str], capacity: Mapping[str, int], used: Mapping[str, int]
) -> bool:
    """Whether one more chunk may take each of these limits; an unknown limit has none."""
    return all(used.get(name, 0) < capacity.get(name, 0) for name in wanted)


def passes_after(
    snapshot: DispatchSnapshot, assignments: Sequence[Assignment]
) -> dict[tuple[int, str], float]:
    """The stride passes to carry into the next tick, for the studios of this one."""
    studios_in: dict[str, set[int]] = defaultdict(set)
    for job in snapshot.jobs:
        studios_in[job.pool].add(job.studio_id)
    result: dict[tuple[int, str], float] = {}
    for pool, studios in studios_in.items():
        for studio, value in _passes(snapshot, pool, studios).items():
            result[(studio, pool)] = value
    for assignment in assignments:
        weight = snapshot.weights.get(assignment.studio_id, 1.0)
        result[(assignment.studio_id, assignment.pool)] += 1 / max(weight, 1e-9)
    return result


def _studios_by_pool(snapshot: DispatchSnapshot) -> dict[str, dict[int, list[JobCandidate]]]:
    by_pool: dict[str, dict[int, list[JobCandidate]]] = defaultdict(lambda: defaultdict(list))
    for job in snapshot.jobs:
        by_pool[job.pool][job.studio_id].append(job)
    return by_pool


def _shares(
    snapshot: DispatchSnapshot, pool: str, studios: Iterable[int]
) -> dict[int, StudioShare]:
    return {
        studio: share_of(
            max(snapshot.weights.get(studio, 1.0), 1e-9),
            snapshot.terms.get((studio, pool), NO_TERMS),
        )
        for studio in studios
    }


def _passes(snapshot: DispatchSnapshot, pool: str, studios: Iterable[int]) -> dict[int, float]:
    known = {s: value for (s, p), value in snapshot.passes.items() if p == pool}
    return starting_passes(studios, known)


def _ready_chunks(
    jobs: Sequence[JobCandidate], now: float
) -> Iterator[tuple[JobCandidate, QueuedChunk]]:
    """A studio's chunks that may go now, its jobs in dispatch order.

    The jobs are put in order lazily (a heap): a tick that sends a few chunks of a
    studio with thousands of jobs orders only the jobs it reaches.
    """
    heap = [(dispatch_order(job), index) for index, job in enumerate(jobs)]
    heapq.heapify(heap)
    while heap:
        job = jobs[heapq.heappop(heap)[1]]
        for chunk in job.queued:
            if chunk.not_before is None or chunk.not_before <= now:
                yield job, chunk


def retry_delay(attempts_made: int, base: float, cap: float) -> float:
    """Seconds a failed chunk waits before its next attempt: doubling from ``base``."""
    return min(cap, base * 2 ** max(0, attempts_made - 1))


def exceeds_failure_limit(failed_frames: int, limit: int | None) -> bool:
    """A job with this many frames failed for good stops dispatching (None: no limit)."""
    return limit is not None and failed_frames >= limit


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
    the node's broker queue still holds messages, workers are just slow to claim
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
