"""Studios' use cases and the scheduler's, as real concurrent transactions on PostgreSQL.

One transaction is held at its commit boundary (a ``before_commit`` hook) while the
other runs against the same rows; then the first commits. Each pair runs in both
orders. Afterwards every stored state must be one the transition tables allow, and
every counter (job state and progress, queue depth on /metrics, open attempts) must
equal a recount from the rows. SQLite serialises whole transactions (``BEGIN
IMMEDIATE``), so there is nothing to interleave there; the compare-and-set writers
are checked on both databases at the end.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import delete, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from api.metrics import FarmCollector
from scheduler.core.states import (
    ACTIVE_CHUNK_STATES,
    AttemptState,
    ChunkState,
    JobState,
    derive_job_state,
)
from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow
from scheduler.db.transitions import ChunkChange, save_chunk_changes
from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import RenderfarmError
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.progress import load_progress
from tests.conftest import wait_for
from tests.integration.conftest import (
    Clock,
    RecordingBroker,
    event,
    finished,
    heartbeat,
    submit,
)

pytestmark = pytest.mark.integration


class CommitGate:
    """Holds the commit of transactions made in one named thread until released."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, session: Session) -> None:
        if threading.current_thread().name == self.thread_name and not self.release.is_set():
            self.reached.set()
            assert self.release.wait(30), "the held transaction was never released"


@dataclass
class Outcome:
    errors: list[BaseException] = field(default_factory=list)


def _run(action: Callable[[], Any], outcome: Outcome) -> Callable[[], None]:
    def target() -> None:
        try:
            action()
        except RenderfarmError:
            pass  # a use case refusing (e.g. "job is done already") is a legal outcome
        except BaseException as error:  # reported by the test
            outcome.errors.append(error)

    return target


def waiting_on_a_lock(engine: Engine) -> bool:
    """Whether a transaction of this test's database waits for a row lock."""
    with engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return bool(waiting)


def interleave(engine: Engine, first: Callable[[], Any], second: Callable[[], Any]) -> None:
    """``first`` runs up to its commit and waits there; ``second`` runs (or blocks on a
    row ``first`` holds); then ``first`` commits and both finish."""
    gate = CommitGate("first")
    outcome = Outcome()
    sa_event.listen(Session, "before_commit", gate)
    try:
        one = threading.Thread(target=_run(first, outcome), name="first")
        one.start()
        if not gate.reached.wait(30):
            gate.release.set()  # first had nothing to commit before finishing
        two = threading.Thread(target=_run(second, outcome), name="second")
        two.start()
        wait_for(
            lambda: not two.is_alive() or waiting_on_a_lock(engine), 30, "second to run or block"
        )
        gate.release.set()
        one.join(30)
        two.join(30)
        assert not one.is_alive() and not two.is_alive(), "a transaction hung"
    finally:
        gate.release.set()
        sa_event.remove(Session, "before_commit", gate)
    assert not outcome.errors, outcome.errors


@dataclass
class Farm:
    """A job of seven one-frame chunks on two nodes, in every state a chunk can be:
    1 done, 2 and 3 running, 4 and 6 dispatched, 5 failed (one attempt allowed),
    7 queued."""

    engine: Engine
    studios: StudioService
    scheduler: Scheduler
    clock: Clock
    studio_id: int
    job_id: int
    messages: dict[int, Any]
    said: dict[str, Any] = field(default_factory=dict)  # what the scheduler's actions returned


def build_farm(engine: Engine, farm_settings: Settings) -> Farm:
    """The farm above in an emptied database, with a scheduler of its own."""
    with engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            if table.name != "regions":
                connection.execute(delete(table))
    clock = Clock()
    studios = StudioService(engine, farm_settings, clock)
    studio, _key = studios.create_studio("race")
    assert studio.id is not None
    tuned = farm_settings.model_copy(
        update={"dispatch_buffer": 1, "retry_base_seconds": 5.0, "retry_max_seconds": 60.0}
    )
    scheduler = Scheduler(engine, tuned, RecordingBroker(), clock)
    job_id = submit(studios, studio.id, "1-7", max_attempts=1)
    scheduler.ingest([heartbeat("node-a", slots=2), heartbeat("node-b", slots=2)])
    sent = {m.frames[0]: m for m in scheduler.dispatch_tick()}
    assert sorted(sent) == [1, 2, 3, 4, 5, 6]  # 2 slots and a buffer of 1 each
    scheduler.ingest(
        [
            event("started", sent[1], sent[1].node),
            event("started", sent[2], sent[2].node),
            event("started", sent[3], sent[3].node),
            finished(sent[1], sent[1].node),
            event("failed", sent[5], sent[5].node, error="segfault", exit_code=139),
        ]
    )
    return Farm(engine, studios, scheduler, clock, studio.id, job_id, sent)


@pytest.fixture
def farm(engine: Engine, settings: Settings) -> Farm:
    return build_farm(engine, settings)


def _studio_action(name: str, farm: Farm) -> Callable[[], Any]:
    studios, studio, job = farm.studios, farm.studio_id, farm.job_id
    return {
        "cancel": lambda: studios.cancel_job(studio, job),
        "suspend": lambda: studios.suspend_job(studio, job),
        "resume": lambda: studios.resume_job(studio, job),
        "retry": lambda: studios.retry_job(studio, job),
        "reprioritise": lambda: studios.set_priority(studio, job, 90),
    }[name]


def _scheduler_action(name: str, farm: Farm) -> Callable[[], Any]:
    sent, scheduler = farm.messages, farm.scheduler

    def lose_nodes() -> None:
        farm.clock.now += 3600  # every node falls silent
        scheduler.reconcile()

    def ingest() -> None:
        outcome = scheduler.ingest(
            [
                finished(sent[2], sent[2].node),
                event("failed", sent[3], sent[3].node, error="out of memory", exit_code=137),
                event("started", sent[4], sent[4].node),
            ]
        )
        farm.said["ingested"] = (outcome.applied, outcome.ignored, dict(outcome.finished))

    def dispatch() -> None:
        farm.said["dispatched"] = sorted(m.frames[0] for m in scheduler.dispatch_tick())

    return {"ingest": ingest, "dispatch": dispatch, "lose nodes": lose_nodes}[name]


def outcome_of(farm: Farm) -> dict[str, Any]:
    """Everything a studio or an operator could see of the job afterwards, by frame (row
    ids differ between farms), with what the scheduler's actions reported."""
    with Session(farm.engine) as session:
        job = session.get(JobRow, farm.job_id)
        assert job is not None
        chunks = session.exec(select(ChunkRow).where(ChunkRow.job_id == farm.job_id)).all()
        frame_of = {c.id: c.first_frame for c in chunks}
        attempts = session.exec(select(AttemptRow).where(AttemptRow.job_id == farm.job_id))
        results = session.exec(select(FrameResultRow).where(FrameResultRow.job_id == farm.job_id))
        return {
            "job": (job.state, job.suspended, job.cancelled, job.priority, job.message),
            "chunks": {c.first_frame: (c.state, c.attempts, c.node) for c in chunks},
            "attempts": sorted((frame_of[a.chunk_id], a.number, a.state) for a in attempts),
            "frames done": sorted(r.frame for r in results),
            **farm.said,
        }


def serially(farm_settings: Settings, engine: Engine, actions: tuple[str, str]) -> dict[str, Any]:
    """The outcome of the two actions run one after the other on a farm of its own."""
    farm = build_farm(engine, farm_settings)
    if "resume" in actions:
        farm.studios.suspend_job(farm.studio_id, farm.job_id)
    for name in actions:
        with contextlib.suppress(RenderfarmError):
            _action(name, farm)()
    farm.scheduler.stop_stale_attempts()
    return outcome_of(farm)


def _action(name: str, farm: Farm) -> Callable[[], Any]:
    if name in ("ingest", "dispatch", "lose nodes"):
        return _scheduler_action(name, farm)
    return _studio_action(name, farm)


def assert_consistent(engine: Engine, job_id: int) -> None:
    with Session(engine) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        chunks = session.exec(select(ChunkRow).where(ChunkRow.job_id == job_id)).all()
        states = Counter(ChunkState(c.state) for c in chunks)
        # the stored job state is the one its chunks and flags give
        assert job.state == derive_job_state(
            states, suspended=job.suspended, cancelled=job.cancelled
        )
        if job.cancelled:
            assert not states.keys() & {*ACTIVE_CHUNK_STATES, ChunkState.QUEUED}, states
        # progress and frames done are a recount of the rows
        results = session.exec(select(FrameResultRow).where(FrameResultRow.job_id == job_id)).all()
        progress = load_progress(session, [job])[job_id]
        assert progress.frames_done == len(results) == len({r.frame for r in results})
        assert progress.frames_total == sum(c.frame_count for c in chunks)
        queued = states[ChunkState.QUEUED] + states[ChunkState.DISPATCHED]
        assert progress.frames_queued == queued
        # an attempt is open only while its chunk is active, and only the current one
        attempts = session.exec(select(AttemptRow).where(AttemptRow.job_id == job_id)).all()
        by_chunk = {c.id: c for c in chunks}
        for attempt in attempts:
            if attempt.state in (AttemptState.DISPATCHED, AttemptState.RUNNING):
                chunk = by_chunk[attempt.chunk_id]
                assert ChunkState(chunk.state) in ACTIVE_CHUNK_STATES, (attempt, chunk)
                assert attempt.number == chunk.attempts
    # the queue-depth gauge counts what the rows hold
    depth = {
        sample.labels["pool"]: sample.value
        for family in FarmCollector(engine).collect()
        if family.name == "renderfarm_queue_depth"
        for sample in family.samples
    }
    assert depth.get("cpu", 0) == queued


def chunk_states(engine: Engine, job_id: int) -> dict[int, ChunkState]:
    with Session(engine) as session:
        return {
            c.id: ChunkState(c.state)
            for c in session.exec(select(ChunkRow).where(ChunkRow.job_id == job_id))
            if c.id is not None
        }


@pytest.fixture
def postgres_only(settings: Settings) -> Iterator[None]:
    if not settings.effective_database_url.startswith("postgresql"):
        pytest.skip("transactions interleave on PostgreSQL; SQLite runs them one at a time")
    yield


@pytest.mark.parametrize("studio_first", [True, False], ids=["studio-first", "scheduler-first"])
@pytest.mark.parametrize("scheduler_action", ["ingest", "dispatch", "lose nodes"])
@pytest.mark.parametrize("studio_action", ["cancel", "suspend", "resume", "retry", "reprioritise"])
def test_studio_and_scheduler_transactions_interleave_serialisably(
    postgres_only: None,
    engine: Engine,
    settings: Settings,
    farm: Farm,
    studio_action: str,
    scheduler_action: str,
    studio_first: bool,
) -> None:
    """Whatever the interleaving, the outcome (every chunk, attempt, frame, the job and
    what the scheduler reported) is that of the two run one after the other, in one
    order or the other, and every stored figure equals a recount."""
    if studio_action == "resume":
        farm.studios.suspend_job(farm.studio_id, farm.job_id)
    order = (studio_action, scheduler_action)
    first, second = order if studio_first else order[::-1]
    interleave(engine, _action(first, farm), _action(second, farm))
    farm.scheduler.stop_stale_attempts()
    assert_consistent(engine, farm.job_id)
    seen = outcome_of(farm)
    serial = [
        serially(settings, engine, (first, second)),
        serially(settings, engine, (second, first)),
    ]
    assert seen in serial, (seen, serial)


def test_a_cancel_that_commits_first_wins_over_ingestion(
    postgres_only: None, engine: Engine, farm: Farm
) -> None:
    """The bug this module was written for: ingestion put a chunk of a cancelled job
    back in the queue."""
    ingest = _scheduler_action("ingest", farm)
    interleave(engine, lambda: farm.studios.cancel_job(farm.studio_id, farm.job_id), ingest)
    states = chunk_states(engine, farm.job_id)
    assert ChunkState.QUEUED not in states.values()
    assert farm.studios.get_job(farm.studio_id, farm.job_id).job.state == JobState.CANCELLED


def test_a_change_from_a_stale_read_does_not_move_the_chunk(engine: Engine, farm: Farm) -> None:
    """The compare-and-set writer itself: a chunk read running, then cancelled by another
    transaction, is not finished by the first; the writer names it."""
    chunk_id = farm.messages[2].chunk_id
    attempt = farm.messages[2].attempt
    farm.studios.cancel_job(farm.studio_id, farm.job_id)  # commits: chunk 2 is cancelled
    with Session(engine) as session:
        stale = ChunkChange(chunk_id, ChunkState.RUNNING, attempt, ChunkState.DONE)
        assert save_chunk_changes(session, [stale]) == {chunk_id}
        session.commit()
    assert chunk_states(engine, farm.job_id)[chunk_id] == ChunkState.CANCELLED
