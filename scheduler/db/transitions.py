"""The state writers: every change of a chunk's, an attempt's or a job's state goes
through this module, one function family per entity.

Each write is compare-and-set: ``UPDATE ... WHERE <rows> AND state IN (<expected>)``,
where the expected states are the caller's (what it read, or what it means to move)
and must all be states the transition tables of ``scheduler.core.states`` let move to
the target; asking for anything else is a programming error (``IllegalTransition``),
so the code cannot drift from the tables. A row whose state moved meanwhile (another
transaction committed first) is not touched, and the writer says which rows did not
move, so the caller decides: usually, that its decision is stale and is dropped.

Locks: a transaction that changes chunks locks their jobs first (``lock_jobs``, in
ascending ids; ``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL, which foreign-key
checks of new rows pointing at a job do not wait for; SQLite's ``BEGIN IMMEDIATE``
already serialises writers). So the API's use cases and the scheduler take turns per
job, and a job's derived state is computed from chunk rows no other transaction is
changing (``refresh_job_states``). A studio's use case locks one job; only the
scheduler (one active at a time) locks several in a transaction, sometimes in more
than one batch, so no two transactions can wait for each other in a cycle.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Update, bindparam, func, or_, update
from sqlalchemy import select as sql_select
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from scheduler.core.chunks import cut
from scheduler.core.frames import FrameRange
from scheduler.core.states import (
    ATTEMPT_TRANSITIONS,
    CHUNK_TRANSITIONS,
    JOB_TRANSITIONS,
    AttemptState,
    ChunkState,
    JobState,
    derive_job_state,
    sources_of,
)
from scheduler.db.among import among
from scheduler.db.outbox import emit
from scheduler.db.tables import AttemptRow, ChunkRow, FrameResultRow, JobRow

log = logging.getLogger(__name__)

_CHUNKS = ChunkRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = AttemptRow.__table__  # type: ignore[attr-defined]
_JOBS = JobRow.__table__  # type: ignore[attr-defined]


class IllegalTransition(ValueError):
    """The code asked for a state change the transition table forbids."""


def _checked(table: Mapping[Any, frozenset[Any]], target: Any, expected: Iterable[Any]) -> tuple:
    expected = tuple(sorted(set(expected)))
    illegal = [s for s in expected if s != target and s not in sources_of(table, target)]
    if illegal or not expected:
        raise IllegalTransition(f"{list(illegal or expected)} -> {target} is not in the table")
    return expected


@dataclass(slots=True)
class Moved:
    """What a chunk write did: the rows that moved, the named rows that did not (their
    state was not one expected), and the jobs whose chunks moved."""

    ids: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    jobs: set[int] = field(default_factory=set)


# Jobs ---------------------------------------------------------------------------------


def lock_jobs(session: Session, job_ids: Iterable[int]) -> list[JobRow]:
    """The jobs, locked for this transaction in id order (PostgreSQL: FOR UPDATE)."""
    ids = sorted(set(job_ids))
    if not ids:
        return []
    return list(session.exec(_LOCK_JOBS, params={"ids": ids}).all())


_LOCK_JOBS = (
    select(JobRow)
    .where(among(col(JobRow.id), "ids"))
    .order_by(col(JobRow.id))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)  # what was read before the lock may be stale
)
_LOCK_JOBS_OF_CHUNKS = (
    select(JobRow)
    .where(
        col(JobRow.id).in_(sql_select(col(ChunkRow.job_id)).where(among(col(ChunkRow.id), "ids")))
    )
    .order_by(col(JobRow.id))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


def lock_jobs_of_chunks(session: Session, chunk_ids: Collection[int]) -> dict[int, JobRow]:
    """Lock the jobs of these chunks (id order) before reading and changing the chunks;
    the jobs by id, as locked (what ``refresh_job_states`` needs of them)."""
    if not chunk_ids:
        return {}
    jobs = session.exec(_LOCK_JOBS_OF_CHUNKS, params={"ids": list(chunk_ids)}).all()
    return {job.id: job for job in jobs if job.id is not None}


def refresh_job_states(session: Session, jobs: Sequence[JobRow], now: float) -> list[int]:
    """Store each job's derived state (compare-and-set), with when it started and ended;
    returns the jobs whose state did not move.

    Call it after the transaction's chunk changes, with the jobs locked (``lock_jobs``):
    the derivation then reads every chunk state as it will be committed, and a job
    that does not move is a bug, logged. So is a derived state the table forbids: that
    job is left as it is rather than failing the whole transaction (an ingest batch).
    """
    missed = []
    for job in jobs:
        assert job.id is not None
        current = JobState(job.state)
        state = derive_job_state(
            chunk_states_present(session, job.id), suspended=job.suspended, cancelled=job.cancelled
        )
        if state == current:
            continue
        if state not in JOB_TRANSITIONS[current]:
            log.error("job %d: its chunks say %s but %s -> %s is not in the table; left %s",
                      job.id, state, current, state, current)  # fmt: skip
            missed.append(job.id)
            continue
        values: dict[str, Any] = {"state": state}
        if state == JobState.RUNNING and job.started_at is None:
            values["started_at"] = now
        values["finished_at"] = now if state.is_final else None
        if state == JobState.FAILED and not job.message:
            values["message"] = f"{failed_frames(session, job.id)} frame(s) failed every attempt"
        moved = session.execute(
            update(JobRow)
            .where(col(JobRow.id) == job.id, col(JobRow.state) == current)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount:  # type: ignore[attr-defined]
            for name, value in values.items():
                set_committed_value(job, name, value)
            if state in (JobState.DONE, JobState.FAILED):
                emit(
                    session, job.studio_id, f"job.{state.value}", now, job.id, name=job.name,
                    state=state.value, message=job.message, frames=job.frame_count,
                    show=job.show, sequence=job.sequence, shot=job.shot,
                )  # fmt: skip
        else:
            log.error("job %d moved from %s under a lock; its state is left", job.id, current)
            missed.append(job.id)
    return missed


def failed_frames(session: Session, job_id: int) -> int:
    """Frames of the job's failed chunks that no attempt rendered."""
    failed = session.execute(_FAILED_FRAMES, {"job": job_id}).scalar_one()
    done = session.execute(_DONE_IN_FAILED, {"job": job_id}).scalar_one()
    return int(failed or 0) - int(done or 0)


_FAILED_FRAMES = sql_select(func.sum(ChunkRow.frame_count)).where(
    col(ChunkRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.FAILED
)
_DONE_IN_FAILED = (  # frames of failed chunks that an earlier attempt did render
    sql_select(func.count())
    .select_from(FrameResultRow)
    .join(ChunkRow, col(ChunkRow.id) == col(FrameResultRow.chunk_id))
    .where(col(FrameResultRow.job_id) == bindparam("job"), col(ChunkRow.state) == ChunkState.FAILED)
)


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


# Chunks -------------------------------------------------------------------------------


def move_chunks(
    session: Session,
    to: ChunkState,
    expected: Collection[ChunkState],
    *,
    ids: Collection[int] | None = None,
    job: int | None = None,
    nodes: Collection[str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Moved:
    """Move the chunks chosen by ``ids``, ``job`` or ``nodes`` (all that are given) that
    are in one of the ``expected`` states to ``to``, setting ``values`` too."""
    states = _checked(CHUNK_TRANSITIONS, to, expected)
    statement = update(ChunkRow).where(col(ChunkRow.state).in_(states))
    chosen: dict[str, Any] = {}
    if ids is not None:
        if not ids:
            return Moved()
        statement = statement.where(among(col(ChunkRow.id), "ids"))
        chosen["ids"] = list(ids)
    if job is not None:
        statement = statement.where(col(ChunkRow.job_id) == job)
    if nodes is not None:
        if not nodes:
            return Moved()
        statement = statement.where(among(col(ChunkRow.node), "nodes"))
        chosen["nodes"] = list(nodes)
    statement = statement.values({**(values or {}), "state": to})
    rows = session.execute(
        statement.returning(col(ChunkRow.id), col(ChunkRow.job_id)).execution_options(
            synchronize_session=False
        ),
        chosen,
    ).all()
    moved = Moved([chunk_id for chunk_id, _ in rows], jobs={job_id for _, job_id in rows})
    if ids is not None:
        moved.missed = sorted(set(ids) - set(moved.ids))
    return moved


def claim_chunks(session: Session, nodes: Mapping[int, str], now: float) -> list[Any]:
    """Queued chunks become dispatched to their node (by chunk id) under a new attempt
    number; rows claimed: (id, job id, attempt, first frame, last frame, step). A chunk
    cancelled since the snapshot stays cancelled (it is simply not returned)."""
    if not nodes:
        return []
    claimed = list(session.execute(_CLAIM, {"ids": list(nodes), "now": now}).all())
    if claimed:  # each to its own node: a second statement (RETURNING takes no executemany)
        session.execute(
            _PLACE, [{"b_id": chunk_id, "node": nodes[chunk_id]} for chunk_id, *_ in claimed]
        )
    return claimed


_CLAIM = (
    update(ChunkRow)
    .where(
        among(col(ChunkRow.id), "ids"),
        col(ChunkRow.state).in_(
            _checked(CHUNK_TRANSITIONS, ChunkState.DISPATCHED, [ChunkState.QUEUED])
        ),
    )
    .values(
        state=ChunkState.DISPATCHED,
        attempts=ChunkRow.attempts + 1,
        dispatched_at=bindparam("now"),
        started_at=None,
        node=None,
    )
    .returning(
        col(ChunkRow.id),
        col(ChunkRow.job_id),
        col(ChunkRow.attempts),
        col(ChunkRow.first_frame),
        col(ChunkRow.last_frame),
        col(ChunkRow.step),
    )
)

_PLACE = _CHUNKS.update().where(_CHUNKS.c.id == bindparam("b_id")).values(node=bindparam("node"))


@dataclass(frozen=True, slots=True)
class Block:
    """A queued row standing for several chunks of its job, as it was read."""

    id: int
    position: int
    frames: FrameRange
    chunks: int


def cut_block(
    session: Session, job: JobRow, block: Block, count: int
) -> list[tuple[int, FrameRange]]:
    """Cut the first ``count`` chunks off a queued block: each becomes a queued row of
    its own at the block's first positions, and the block keeps the rest (the last
    chunk cut takes over the block's row when nothing is left); the new chunks' (id,
    frames). Compare-and-set, like a state write: a block no longer as it was read (a
    cancel committed first) is left, and nothing is cut. Call with the job locked."""
    pieces, rest = cut(block.frames, job.chunk_size, count)
    if not pieces:
        return []
    position = block.position + len(pieces)
    keeps = rest if rest is not None else pieces[-1]
    moved = session.execute(
        _SHRINK_BLOCK,
        {
            "b_id": block.id,
            "b_first": block.frames.start,
            "b_chunks": block.chunks,
            "first_frame": keeps.start,
            "step": keeps.step,
            "frame_count": len(keeps),
            "chunks": block.chunks - len(pieces) if rest is not None else 1,
            "position": position if rest is not None else position - 1,
        },
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        return []
    new = pieces if rest is not None else pieces[:-1]
    ids = list(
        session.scalars(
            _CHUNKS.insert().returning(_CHUNKS.c.id, sort_by_parameter_order=True),
            [
                {
                    "job_id": job.id,
                    "position": block.position + offset,
                    "pool": job.pool,
                    "first_frame": piece.start,
                    "last_frame": piece.end,
                    "step": piece.step,
                    "frame_count": len(piece),
                    "chunks": 1,
                    "state": ChunkState.QUEUED,
                    "attempts": 0,
                    "retry_base": 0,
                    "failures": 0,
                }
                for offset, piece in enumerate(new)
            ],
        )
    ) if new else []  # fmt: skip
    if rest is None:
        ids.append(block.id)
    return list(zip(ids, pieces, strict=True))


_SHRINK_BLOCK = (
    _CHUNKS.update()
    .where(
        _CHUNKS.c.id == bindparam("b_id"),
        _CHUNKS.c.state == ChunkState.QUEUED,
        _CHUNKS.c.first_frame == bindparam("b_first"),
        _CHUNKS.c.chunks == bindparam("b_chunks"),
    )
    .values(
        first_frame=bindparam("first_frame"),
        step=bindparam("step"),
        frame_count=bindparam("frame_count"),
        chunks=bindparam("chunks"),
        position=bindparam("position"),
    )
)


@dataclass(slots=True)
class ChunkChange:
    """One chunk's change as an ingest batch decided it, from the state and attempt it read."""

    id: int
    read_state: ChunkState
    read_attempt: int
    state: ChunkState
    values: dict[str, Any] = field(default_factory=dict)


def save_chunk_changes(session: Session, changes: Sequence[ChunkChange]) -> set[int]:
    """Apply each change only if its chunk is still in the state and attempt it was read
    in; one executemany per shape of change. Returns the ids of chunks that did not move."""
    shapes: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        _checked(CHUNK_TRANSITIONS, change.state, [change.read_state])
        shapes[tuple(sorted(change.values))].append(
            {
                "b_id": change.id,
                "b_state": change.read_state,
                "b_attempt": change.read_attempt,
                "state": change.state,
                **change.values,
            }
        )
    missed_any = False
    for columns, rows in shapes.items():
        result = session.execute(_chunk_change(columns), rows)
        missed_any = missed_any or result.rowcount != len(rows)  # type: ignore[attr-defined]
    if not missed_any:
        return set()
    # Rare: another transaction moved some of them first. Find which.
    wanted = {c.id: c for c in changes}
    now_in = session.execute(
        sql_select(_CHUNKS.c.id, _CHUNKS.c.state, _CHUNKS.c.attempts).where(
            _CHUNKS.c.id.in_(list(wanted))
        )
    ).all()
    return {
        chunk_id
        for chunk_id, state, attempt in now_in
        if state != wanted[chunk_id].state or attempt != wanted[chunk_id].read_attempt
    } | (set(wanted) - {chunk_id for chunk_id, *_ in now_in})


@functools.cache
def _chunk_change(columns: tuple[str, ...]) -> Update:
    return (
        _CHUNKS.update()
        .where(
            _CHUNKS.c.id == bindparam("b_id"),
            _CHUNKS.c.state == bindparam("b_state"),
            _CHUNKS.c.attempts == bindparam("b_attempt"),
        )
        .values({name: bindparam(name) for name in ("state", *columns)})
    )


# Attempts -----------------------------------------------------------------------------


def open_attempts(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert the attempts a dispatch starts, in state dispatched."""
    if rows:
        session.execute(
            _ATTEMPTS.insert(), [{**row, "state": AttemptState.DISPATCHED} for row in rows]
        )


def save_attempt_changes(
    session: Session, changes: Mapping[tuple[int, int], Mapping[str, Any]]
) -> int:
    """Per (chunk id, attempt number), the columns to set; a change of ``state`` is made
    only from a state the table lets move there (a finished attempt stays finished).
    Returns how many of the changes did not apply (a duplicate "started", say)."""
    shapes: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for (chunk_id, number), values in changes.items():
        if values:
            target = values.get("state")
            key = (AttemptState(target) if target else None, tuple(sorted(values)))
            shapes[key].append({"b_chunk": chunk_id, "b_number": number, **values})
    missed = 0
    for (target, columns), rows in shapes.items():
        result = session.execute(_attempt_change(target, columns), rows)
        missed += len(rows) - result.rowcount  # type: ignore[attr-defined]
    return missed


@functools.cache
def _attempt_change(target: AttemptState | None, columns: tuple[str, ...]) -> Update:
    statement = _ATTEMPTS.update().where(
        _ATTEMPTS.c.chunk_id == bindparam("b_chunk"), _ATTEMPTS.c.number == bindparam("b_number")
    )
    if target is not None:
        expected = _checked(ATTEMPT_TRANSITIONS, target, sources_of(ATTEMPT_TRANSITIONS, target))
        # OR of equalities: an IN list would be an "expanding" parameter, which an
        # executemany cannot take
        statement = statement.where(or_(*(_ATTEMPTS.c.state == state for state in expected)))
    return statement.values({name: bindparam(name) for name in columns})


def close_attempts(session: Session, ids: Collection[int], to: AttemptState, now: float) -> None:
    """End open attempts (dispatched or running) whose chunk moved on."""
    if ids:
        expected = _checked(
            ATTEMPT_TRANSITIONS, to, (AttemptState.DISPATCHED, AttemptState.RUNNING)
        )
        session.execute(
            update(AttemptRow)
            .where(col(AttemptRow.id).in_(list(ids)), col(AttemptRow.state).in_(expected))
            .values(state=to, finished_at=now)
            .execution_options(synchronize_session=False)
        )


def end_queued_chunks(session: Session, job_id: int) -> Moved:
    """The farm gives up on a job's chunks that never started (failure limit, failed
    dependency); ``derive_job_state`` then makes the job failed once nothing runs."""
    return move_chunks(session, ChunkState.CANCELLED, [ChunkState.QUEUED], job=job_id)


def requeue_chunks(
    session: Session, chunk_ids: Sequence[int], expected: Sequence[ChunkState], now: float
) -> int:
    """Send chunks back to the queue (a new attempt renders them) if they are still in
    an ``expected`` state; their jobs' states follow. How many went back."""
    if not chunk_ids:
        return 0
    lock_jobs_of_chunks(session, chunk_ids)
    moved = move_chunks(session, ChunkState.QUEUED, expected, ids=chunk_ids, values={"node": None})
    refresh_job_states(session, lock_jobs(session, moved.jobs), now)
    return len(moved.ids)
