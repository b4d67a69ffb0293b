"""Dispatch: load what may go out, claim it, and build the messages that send it.

A tick's cost follows the free slots, not the size of the backlog: chunks are read
in the policy's own job order, and only as many as the pools have room for.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Executable, Integer, String, bindparam, cast, func
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from scheduler.core.dependencies import (
    WAITING,
    DependencyMode,
    Gate,
    OnDependencyFailure,
    dependency_gate,
    frames_ready,
)
from scheduler.core.fairshare import PoolTerms
from scheduler.core.frames import FrameRange
from scheduler.core.placement import (
    NO_REQUIREMENTS,
    Capabilities,
    HostRequirements,
    LiveNodes,
    NodeView,
    Requirements,
    Room,
)
from scheduler.core.policy import (
    Assignment,
    DispatchSnapshot,
    JobCandidate,
    QueuedChunk,
    dispatch_order,
)
from scheduler.core.states import ACTIVE_CHUNK_STATES, AttemptState, ChunkState, JobState
from scheduler.db import (
    AttemptRow,
    ChunkRow,
    FrameResultRow,
    JobDependency,
    JobRow,
    Limit,
    NodeRow,
    Studio,
    Subscription,
)
from scheduler.db.among import among
from scheduler.db.outbox import emit
from scheduler.db.transitions import (
    Block,
    claim_chunks,
    cut_block,
    end_queued_chunks,
    lock_jobs,
    open_attempts,
    refresh_job_states,
)
from scheduler.dispatch.siting import WAITS_FOR_WINDOW, JobSiting, Siting, waiting_message
from scheduler.wire.messages import (
    ChunkMessage,
    attempt_log_path,
    bundle_task_id,
    output_pattern_for,
)
from scheduler.wire.openjd import StepTasks

STEP_TASKS = StepTasks()  # OpenJD steps' tasks, their templates read once per job

# The statements of the hot path are built once: SQLAlchemy spends more time building
# and keying a statement than SQLite spends running it (see BENCHMARKS.md).
_LIVE_NODES = sql_select(  # and taking work: not drained or disabled
    col(NodeRow.name), col(NodeRow.pool), col(NodeRow.slots), col(NodeRow.cores),
    col(NodeRow.memory_bytes), col(NodeRow.gpus), col(NodeRow.region),
    # As stored (text): what a node offers changes rarely, so it is decoded once per
    # shape (``NodeShapes``), not once per node per tick: a farm has thousands.
    cast(col(NodeRow.tags), String), cast(col(NodeRow.capabilities), String),
    col(NodeRow.bundle),
).where(
    col(NodeRow.state) == "online",
    col(NodeRow.last_heartbeat) >= bindparam("since"),
    col(NodeRow.admin) == "enabled",
)  # fmt: skip
_LIVE_NODES_NAMED = _LIVE_NODES.where(among(col(NodeRow.name), "names"))
# Slices of the farm by name, in Python's order of names (code points): SQLite's own
# (BINARY); PostgreSQL's database collation may order them otherwise ("node-2" and
# "node_1"), so there the names are compared as "C": bytes, code points in a UTF-8
# database (the farm's). Not by the primary key's index then: a scan of the nodes.
_BY_NAME = {"sqlite": col(NodeRow.name), "postgresql": col(NodeRow.name).collate("C")}
_LIVE_NODES_FROM = {
    dialect: _LIVE_NODES.where(name >= bindparam("low")) for dialect, name in _BY_NAME.items()
}
_LIVE_NODES_BETWEEN = {
    dialect: query.where(_BY_NAME[dialect] < bindparam("high"))
    for dialect, query in _LIVE_NODES_FROM.items()
}
_ACTIVE_BY_NODE = (
    sql_select(col(ChunkRow.node), func.count())
    .where(col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES), col(ChunkRow.node).is_not(None))
    .group_by(col(ChunkRow.node))
)
_BLOCKED = (  # failures since the studio last retried the chunk count
    sql_select(col(AttemptRow.job_id), col(AttemptRow.node))
    .join(ChunkRow, col(ChunkRow.id) == col(AttemptRow.chunk_id))
    .where(
        among(col(AttemptRow.job_id), "ids"),
        col(AttemptRow.state) == AttemptState.FAILED,
        col(AttemptRow.node).is_not(None),
        col(AttemptRow.number) > col(ChunkRow.retry_base),
    )
    .group_by(col(AttemptRow.job_id), col(AttemptRow.node))
    .having(func.count() >= bindparam("failures"))
)
NO_NODE = "no live node"  # how the message of a job no node can render begins

_ACTIVE_BY_STUDIO = (
    sql_select(col(JobRow.studio_id), col(ChunkRow.pool), func.count())
    .join(JobRow, col(JobRow.id) == col(ChunkRow.job_id))
    .where(col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))
    .group_by(col(JobRow.studio_id), col(ChunkRow.pool))
)
_WEIGHTS = sql_select(col(Studio.id), col(Studio.weight)).where(among(col(Studio.id), "ids"))
_TERMS = sql_select(
    col(Subscription.studio_id),
    col(Subscription.pool),
    col(Subscription.min_slots),
    col(Subscription.max_slots),
).where(among(col(Subscription.studio_id), "ids"))
_DISPATCHABLE_JOBS = select(JobRow).where(
    col(JobRow.state).in_((JobState.QUEUED, JobState.RUNNING)),
    col(JobRow.suspended).is_(False),
    col(JobRow.cancelled).is_(False),
    among(col(JobRow.pool), "pools"),
)
_NEXT_QUEUED = (  # chunks, and blocks of chunks to cut (scheduler/core/chunks.py)
    sql_select(
        col(ChunkRow.id), col(ChunkRow.attempts), col(ChunkRow.not_before),
        col(ChunkRow.first_frame), col(ChunkRow.last_frame), col(ChunkRow.step),
        col(ChunkRow.chunks), col(ChunkRow.position),
    )
    .where(col(ChunkRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.QUEUED)
    .where(col(ChunkRow.not_before).is_(None) | (col(ChunkRow.not_before) <= bindparam("now")))
    .order_by(col(ChunkRow.position))
    .limit(bindparam("wanted", type_=Integer))
)  # fmt: skip
_DEPENDENCIES = (
    sql_select(col(JobDependency.job_id), col(JobDependency.depends_on), col(JobRow.state))
    .join(JobRow, col(JobRow.id) == col(JobDependency.depends_on))
    .where(among(col(JobDependency.job_id), "ids"))
)
_CHUNK_RANGES_IN = sql_select(
    col(ChunkRow.first_frame), col(ChunkRow.last_frame), col(ChunkRow.step)
).where(
    col(ChunkRow.job_id) == bindparam("job"),
    col(ChunkRow.first_frame) <= bindparam("high"),
    col(ChunkRow.last_frame) >= bindparam("low"),
)
_DONE_FRAMES_IN = sql_select(col(FrameResultRow.frame)).where(
    col(FrameResultRow.job_id) == bindparam("job"),
    col(FrameResultRow.frame) >= bindparam("low"),
    col(FrameResultRow.frame) <= bindparam("high"),
)
FRAME_LOOKAHEAD = 200  # queued chunks examined per tick for a frame-dependent job
_LIMITS = sql_select(col(Limit.name), col(Limit.capacity))
_ACTIVE_BY_JOB = (
    sql_select(col(ChunkRow.job_id), func.count())
    .where(col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES))
    .group_by(col(ChunkRow.job_id))
)
_JOB_LIMITS = sql_select(col(JobRow.id), col(JobRow.limits)).where(among(col(JobRow.id), "ids"))


@dataclass(slots=True)
class HeldJobs:
    """What loading a snapshot learnt about jobs that wait: the messages that say why
    (None: take the old reason away), and the jobs whose dependency failed, which end."""

    messages: dict[int, str | None] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # how a new message begins
    failed: dict[int, str] = field(default_factory=dict)


def load_dispatch_snapshot(
    session: Session,
    now: float,
    settings: DispatchSettings,
    buffer_for: Callable[[str], int],
    passes: Mapping[tuple[int, str], float],
    siting: Siting | None = None,
    roster: NodeRoster | None = None,
) -> tuple[DispatchSnapshot, dict[int, JobRow], HeldJobs]:
    """Live nodes and their room, studios' shares, and the next queued chunks of the
    jobs that may dispatch; and why the others wait. Reads, but for cutting the chunks
    it loads off their blocks."""
    held_jobs = HeldJobs()
    roster = roster or NodeRoster()
    nodes = roster.room(session, now - settings.node_timeout, now, buffer_for)
    room = nodes.pools_with_room()
    if not room:
        return DispatchSnapshot((), room=nodes), {}, held_jobs
    held: dict[tuple[int, str], int] = {
        (studio, pool): n for studio, pool, n in session.execute(_ACTIVE_BY_STUDIO)
    }
    jobs = session.exec(_DISPATCHABLE_JOBS, params={"pools": list(room)}).all()
    dependencies = _dependencies(session, jobs)
    avoid = _blocklists(session, jobs, settings.node_blocklist_after)
    sited = siting.decide(session, jobs, nodes, now) if siting is not None else {}
    candidates: list[JobCandidate] = []
    # Chunks are loaded in the policy's own job order, and no more per studio and pool
    # than the pool has room for: a tick's cost follows the free slots, not the backlog.
    loaded: Counter[tuple[int, str]] = Counter()
    for job in sorted(jobs, key=lambda j: dispatch_order(_candidate(j, ()))):
        wanted = room[job.pool] - loaded[(job.studio_id, job.pool)]
        if wanted <= 0:
            continue
        assert job.id is not None
        if not _placeable(job, nodes, held_jobs):
            continue
        waits_for = dependencies.get(job.id)
        if waits_for and not _gate_open(job, waits_for, held_jobs):
            continue
        site = sited.get(job.id)
        if not _time_to_start(job, site, now, settings, held_jobs):
            continue
        if waits_for and job.dependency_mode == DependencyMode.FRAME:
            queued = _frames_ready_chunks(session, job, waits_for, wanted, now)
        else:
            queued = tuple(
                QueuedChunk(chunk.id, chunk.attempts, chunk.not_before)
                for chunk in _next_queued(session, job, wanted, now)
            )
        loaded[(job.studio_id, job.pool)] += len(queued)
        if queued:
            prefer = site.prefer if site is not None else ()
            candidates.append(_candidate(job, queued, avoid.get(job.id, frozenset()), prefer))
    studios = list({job.studio_id for job in candidates})
    weights: dict[int, float] = {}
    terms: dict[tuple[int, str], PoolTerms] = {}
    if studios:
        weights = {sid: w for sid, w in session.execute(_WEIGHTS, {"ids": studios})}
        terms = {
            (sid, pool): PoolTerms(minimum, maximum)
            for sid, pool, minimum, maximum in session.execute(_TERMS, {"ids": studios})
        }
    limits, limits_used = _load_limits(session, candidates)
    snapshot = DispatchSnapshot(
        candidates,
        active=held,
        weights=weights,
        terms=terms,
        passes=passes,
        limits=limits,
        limits_used=limits_used,
        room=nodes,
    )
    return snapshot, {j.id: j for j in jobs if j.id is not None}, held_jobs


class DispatchSettings(Protocol):
    node_timeout: float
    node_blocklist_after: int
    billing_timezone: str  # the farm's local time, for the times a message names


class NodeRoster:
    """The live nodes and what they offer, kept between dispatch ticks as classes of
    nodes alike (``LiveNodes``): ten thousand nodes read and grouped on every tick
    were most of a tick, and read all at once every few seconds, a tick of 100-250 ms.

    Read whole at first, after a pause of ``MAX_AGE`` or more between
    ticks (or a clock that stepped back), or when many nodes changed at once. A node
    that appeared, came back, changed what it offers, was marked lost, or that an
    operator drained, disabled or enabled (the bell names it) is read again alone
    (``changed``) before the next tick. And each tick reads a slice of the farm
    again, by name from where the last one ended, as much as is due for every node to
    be read again within ``MAX_AGE`` seconds (and a tick): what changed by other means
    (a row written by hand, a bell lost in a broker outage) is seen within that. A
    node that falls silent stays until it is marked lost (``node_timeout``); what was
    sent to it meanwhile is sent again.

    ``room`` returns a view of the roster itself: use it within the tick.
    """

    MAX_AGE = 5.0

    def __init__(self) -> None:
        self._live: LiveNodes | None = None
        self._names: list[str] = []  # the live nodes' names, sorted: the slices
        self._from = ""  # the name the next slice starts from ("": the first)
        self._sliced_at = -math.inf
        self._changed: set[str] = set()
        self._shapes = NodeShapes()

    def changed(self, names: Iterable[str]) -> None:
        self._changed.update(names)

    def room(
        self, session: Session, live_since: float, now: float, buffer_for: Callable[[str], int]
    ) -> Room:
        """Live nodes with the room in their queues: slots and a share of the pool's
        buffer, less the chunks sent to them or rendering on them."""
        live = self._live
        elapsed = now - self._sliced_at  # negative: the clock stepped back
        # Each changed node costs a walk of its class: many at once, read all.
        many = len(self._changed) > min(256, len(self._names) // 4 + 1)
        if live is None or many or not 0 <= elapsed < self.MAX_AGE:
            live = LiveNodes(self._read(session, _LIVE_NODES, since=live_since))
            self._live, self._names = live, sorted(live.views)
            self._from, self._sliced_at, self._changed = "", now, set()
        else:
            if self._changed:  # read before it is forgotten: a failed read loses nothing
                found = list(self._read(
                    session, _LIVE_NODES_NAMED, since=live_since, names=list(self._changed)
                ))  # fmt: skip
                self._update(live, self._changed, found)
                self._changed = set()
            self._read_slice(session, live, live_since, now, elapsed)
        buffers = {pool: math.ceil(buffer_for(pool) / n) for pool, n in live.per_pool().items()}
        return Room(live, buffers, {node: n for node, n in session.execute(_ACTIVE_BY_NODE)})

    def _read_slice(
        self, session: Session, live: LiveNodes, since: float, now: float, elapsed: float
    ) -> None:
        """Read again the share of the farm due since the last slice (``elapsed`` s,
        under ``MAX_AGE``): the names from ``_from`` on (the first slice from the start
        of the names, the last to their end, so a node the roster does not know is
        found too)."""
        count = math.ceil(len(self._names) * elapsed / self.MAX_AGE)
        if self._names and not count:
            return
        start = bisect.bisect_left(self._names, self._from)
        end = start + count
        high = self._names[end] if end < len(self._names) else None
        dialect = session.get_bind().dialect.name
        found = list(
            self._read(session, _LIVE_NODES_FROM[dialect], since=since, low=self._from)
            if high is None
            else self._read(
                session, _LIVE_NODES_BETWEEN[dialect], since=since, low=self._from, high=high
            )
        )
        self._update(live, set(self._names[start:end]), found)
        self._from, self._sliced_at = high or "", now

    def _update(self, live: LiveNodes, asked: set[str], found: Iterable[NodeView]) -> None:
        """Put each node found; drop those asked about and not found (not live now)."""
        missing = set(asked)
        for node in found:
            missing.discard(node.name)
            if node.name not in live.views:
                bisect.insort(self._names, node.name)
            live.put(node)
        for name in missing:
            if live.drop(name):
                del self._names[bisect.bisect_left(self._names, name)]

    def _read(self, session: Session, query: Executable, **params: Any) -> Iterator[NodeView]:
        """Live nodes, each with its slots as its room when idle."""
        rows = session.execute(query, params)
        for name, pool, slots, cores, memory_bytes, gpus, region, tags, offered, bundle in rows:
            labels, offers = self._shapes.of(cores, memory_bytes, gpus, tags, offered)
            yield NodeView(
                name, pool, slots, cores, memory_bytes, gpus, labels, offers, region, slots, bundle
            )


class NodeShapes:
    """Nodes' tags and capabilities, decoded once per distinct shape (a farm's nodes
    come in a few hardware types), from their stored text."""

    LIMIT = 4096  # shapes kept; past that, they are decoded afresh

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], tuple[frozenset[str], Capabilities]] = {}

    def of(
        self, cores: int, memory_bytes: int, gpus: int, tags: str | None, offered: str | None
    ) -> tuple[frozenset[str], Capabilities]:
        key = (cores, memory_bytes, gpus, tags, offered)
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            reported = json.loads(offered) if offered else None
            found = (
                frozenset(json.loads(tags) or ()) if tags else frozenset(),
                Capabilities.of(cores, memory_bytes, gpus, reported),
            )
            self._known[key] = found
        return found


def _needs(job: JobRow) -> Requirements:
    return Requirements(
        job.min_cores,
        job.min_memory_bytes,
        job.min_gpus,
        frozenset(job.required_tags or ()),
        HostRequirements.from_json(job.host_requirements),
    )


def _placeable(job: JobRow, nodes: Room, held: HeldJobs) -> bool:
    """Whether a live node of its pool can ever render the job; if not, ``held`` says why."""
    needs = _needs(job)
    if needs == NO_REQUIREMENTS or nodes.can_ever_run(job.pool, needs):
        _note_held(job, NO_NODE, None, held)
        return True
    message = f"{NO_NODE} of pool {job.pool} has {needs.describe()}; it waits for one"
    _note_held(job, NO_NODE, message, held)
    return False


def _note_held(job: JobRow, reason: str, message: str | None, held: HeldJobs) -> None:
    """Note why a job is held (a message starting with ``reason``), or, once it is no
    longer held for that reason, that the message goes; other messages stay."""
    if message is None and not (job.message or "").startswith(reason):
        return
    if job.message != message:
        assert job.id is not None
        held.messages[job.id] = message
        if message is not None:
            held.reasons[job.id] = reason


def save_held_jobs(session: Session, held: HeldJobs, now: float) -> None:
    """Write what a snapshot noted: why jobs wait; jobs whose dependency failed end
    their queued chunks (and so fail) with the reason."""
    if not held.messages and not held.failed:
        return
    jobs = lock_jobs(session, [*held.messages, *held.failed])
    for job in jobs:
        assert job.id is not None
        if job.id in held.failed:
            job.message = held.failed[job.id]
            end_queued_chunks(session, job.id)
        else:
            before, job.message = job.message, held.messages[job.id]
            reason = held.reasons.get(job.id, "")
            newly = job.message is not None and not (before or "").startswith(reason)
            if newly and not JobState(job.state).is_final:  # held, or for another reason
                emit(session, job.studio_id, "job.held", now, job.id, name=job.name,
                     message=job.message)  # fmt: skip
        session.add(job)
    session.flush()
    refresh_job_states(session, [job for job in jobs if job.id in held.failed], now)


def _blocklists(
    session: Session, jobs: Sequence[JobRow], failures: int
) -> dict[int, frozenset[str]]:
    """Per job, the nodes it failed on ``failures`` times or more."""
    ids = [job.id for job in jobs if job.id is not None]
    found: dict[int, set[str]] = defaultdict(set)
    if ids:
        for job_id, node in session.execute(_BLOCKED, {"ids": ids, "failures": failures}):
            found[job_id].add(node)
    return {job_id: frozenset(nodes) for job_id, nodes in found.items()}


def _dependencies(session: Session, jobs: Sequence[JobRow]) -> dict[int, dict[int, JobState]]:
    """For each job that depends on others: their states, by job id."""
    found: dict[int, dict[int, JobState]] = defaultdict(dict)
    ids = [job.id for job in jobs if job.id is not None]
    if ids:
        for job_id, other, state in session.execute(_DEPENDENCIES, {"ids": ids}):
            found[job_id][other] = JobState(state)
    return found


def _gate_open(job: JobRow, waits_for: dict[int, JobState], held: HeldJobs) -> bool:
    """The dependency gate: True if the job may dispatch (some of) its chunks.

    A waiting job's reason, and a job that must fail because its dependency failed,
    are noted in ``held``.
    """
    decision = dependency_gate(
        waits_for,
        DependencyMode(job.dependency_mode),
        OnDependencyFailure(job.on_dependency_failure),
    )
    if decision.gate == Gate.FAIL:
        assert job.id is not None
        held.failed[job.id] = decision.message or "a dependency failed"
    else:
        _note_held(job, WAITING, decision.message, held)
    return decision.gate == Gate.OPEN


def _next_queued(session: Session, job: JobRow, wanted: int, now: float) -> list[QueuedRange]:
    """The job's next ``wanted`` queued chunks that may go now, in order; where they
    reach into a block, its first chunks are cut off it (the job is locked for that)."""
    assert job.id is not None
    rows = session.execute(_NEXT_QUEUED, {"job": job.id, "now": now, "wanted": wanted}).all()
    if any(chunks > 1 for *_, chunks, _position in rows):
        lock_jobs(session, [job.id])  # a cancel committed meanwhile wins: nothing is cut
    found: list[QueuedRange] = []
    for cid, attempts, not_before, first, last, step, chunks, position in rows:
        if len(found) >= wanted:
            break
        frames = FrameRange(first, last, step)
        if chunks == 1:
            found.append(QueuedRange(cid, attempts, not_before, frames))
            continue
        block = Block(cid, position, frames, chunks)
        cut_off = cut_block(session, job, block, wanted - len(found))
        found.extend(QueuedRange(chunk_id, 0, None, piece) for chunk_id, piece in cut_off)
    return found


@dataclass(frozen=True, slots=True)
class QueuedRange:
    id: int
    attempts: int
    not_before: float | None
    frames: FrameRange


def _frames_ready_chunks(
    session: Session, job: JobRow, waits_for: dict[int, JobState], wanted: int, now: float
) -> tuple[QueuedChunk, ...]:
    """Frame mode: the next queued chunks whose frames are done in every dependency."""
    chunks = _next_queued(session, job, FRAME_LOOKAHEAD, now)
    if not chunks:
        return ()
    low = min(chunk.frames.start for chunk in chunks)
    high = max(chunk.frames.end for chunk in chunks)
    has: dict[int, set[int]] = {}
    done: dict[int, set[int]] = {}
    for other in waits_for:
        window = {"job": other, "low": low, "high": high}
        has[other] = {
            frame
            for first, last, step in session.execute(_CHUNK_RANGES_IN, window)
            for frame in FrameRange(first, last, step).within(low, high)
        }
        done[other] = {frame for (frame,) in session.execute(_DONE_FRAMES_IN, window)}
    ready = [
        QueuedChunk(chunk.id, chunk.attempts, chunk.not_before)
        for chunk in chunks
        if frames_ready(chunk.frames, has, done)
    ]
    return tuple(ready[:wanted])


def _load_limits(
    session: Session, candidates: Sequence[JobCandidate]
) -> tuple[dict[str, int], dict[str, int]]:
    """Capacity of every named limit, and how many active chunks hold each."""
    if not any(job.limits for job in candidates):
        return {}, {}
    capacity = {name: n for name, n in session.execute(_LIMITS)}
    active_jobs = {job_id: n for job_id, n in session.execute(_ACTIVE_BY_JOB)}
    used: Counter[str] = Counter()
    if active_jobs:
        for job_id, names in session.execute(_JOB_LIMITS, {"ids": list(active_jobs)}):
            for name in names or ():
                used[name] += active_jobs[job_id]
    return capacity, dict(used)


# Which of a dispatch's chunks (each its node and job, in order) go in one message:
# lists of their indices (scheduler/core/bundles.py decides; alone: one a message).
Group = Callable[[Sequence[tuple[str, int]]], list[list[int]]]


def alone(placed: Sequence[tuple[str, int]]) -> list[list[int]]:
    return [[index] for index in range(len(placed))]


def save_dispatch(
    session: Session,
    assignments: Sequence[Assignment],
    jobs: dict[int, JobRow],
    now: float,
    together: Group = alone,
) -> list[list[ChunkMessage]]:
    """Claim the assigned chunks, open their attempts; the messages to send, each the
    chunks ``together`` groups (one, or a bundle: scheduler/core/bundles.py). An
    attempt sent in a bundle records the bundle's task id (``attempts.message``).

    The jobs are locked first: one suspended or cancelled since the snapshot sends
    nothing, and a chunk cancelled meanwhile is not claimed (compare-and-set).
    """
    locked = {job.id: job for job in lock_jobs(session, {a.job_id for a in assignments})}
    by_chunk = {
        a.chunk_id: a
        for a in assignments
        if (job := locked.get(a.job_id)) is not None and not (job.suspended or job.cancelled)
    }
    claimed = claim_chunks(session, {c: a.node for c, a in by_chunk.items()}, now)
    if not claimed:
        return []
    # Send in the policy's order (the database returns claimed rows in its own).
    order = {a.chunk_id: index for index, a in enumerate(assignments)}
    claimed = sorted(claimed, key=lambda row: order[row[0]])
    groups = together([(by_chunk[row[0]].node, row[1]) for row in claimed])
    carried_by: dict[int, str] = {}
    for group in groups:
        if len(group) > 1:
            bundle = bundle_task_id([(claimed[i][0], claimed[i][2]) for i in group])
            carried_by.update((claimed[i][0], bundle) for i in group)
    open_attempts(
        session,
        [
            {
                "chunk_id": chunk_id,
                "job_id": job_id,
                "number": attempt,
                "pool": by_chunk[chunk_id].pool,
                "node": by_chunk[chunk_id].node,
                "dispatched_at": now,
                "message": carried_by.get(chunk_id),
            }
            for chunk_id, job_id, attempt, *_ in claimed
        ],
    )
    messages = []
    for chunk_id, job_id, attempt, first, last, step in claimed:
        job = jobs[job_id]
        messages.append(
            ChunkMessage(
                chunk_id=chunk_id,
                attempt=attempt,
                job_id=job_id,
                pool=job.pool,
                frames=list(range(first, last + 1, step)),
                renderer=job.renderer,
                settings=dict(job.renderer_settings),
                output_pattern=output_pattern_for(job_id),
                log_path=attempt_log_path(job_id, chunk_id, attempt),
                timeout=job.timeout,
                stall_timeout=job.stall_timeout,
                node=by_chunk[chunk_id].node,
                manifest_id=job.manifest_id,
                memory_bytes=job.min_memory_bytes or None,
                tasks=(
                    STEP_TASKS.of(
                        job_id, job.renderer_settings, job.chunk_size, range(first, last + 1, step)
                    )
                    if job.renderer == "openjd"
                    else None
                ),
            )
        )
    # A dispatch moves a queued job to running; it can move a running job nowhere.
    starting = {m.job_id for m in messages if locked[m.job_id].state != JobState.RUNNING}
    refresh_job_states(session, [locked[job_id] for job_id in sorted(starting)], now)
    return [[messages[i] for i in group] for group in groups]


def _time_to_start(
    job: JobRow, site: JobSiting | None, now: float, settings: DispatchSettings, held: HeldJobs
) -> bool:
    """Whether a job placed for cost or carbon goes now, or waits for its window (its
    message says until when, and by when it must start to meet its deadline)."""
    plan = site.start if site is not None else None
    if plan is None or not plan.waits(now):
        _note_held(job, WAITS_FOR_WINDOW, None, held)
        return True
    _note_held(
        job, WAITS_FOR_WINDOW, waiting_message(plan, ZoneInfo(settings.billing_timezone)), held
    )
    return False


def _candidate(
    job: JobRow,
    queued: Iterable[QueuedChunk],
    avoid: frozenset[str] = frozenset(),
    prefer: tuple[str, ...] = (),
) -> JobCandidate:
    assert job.id is not None
    return JobCandidate(
        job.id,
        job.studio_id,
        job.priority,
        job.pool,
        tuple(queued),
        tuple(job.limits or ()),
        _needs(job),
        avoid,
        prefer,
    )
