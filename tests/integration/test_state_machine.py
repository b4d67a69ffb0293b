"""Hypothesis drives the studios' and the scheduler's use cases in random order against a
real database: submit, dispatch, node events (current, duplicate and stale), cancel,
suspend, resume, retry, reprioritise, lost nodes. After every step each chunk moved at
most once, along the transition table, and every stored figure equals a recount."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from scheduler.core.states import (
    ACTIVE_CHUNK_STATES,
    CHUNK_TRANSITIONS,
    AttemptState,
    ChunkState,
    derive_job_state,
)
from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow
from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import RenderfarmError
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.progress import load_progress
from scheduler.wire.messages import ChunkMessage
from tests.integration.conftest import Clock, RecordingBroker, event, finished, heartbeat, submit

pytestmark = pytest.mark.integration
NODES = ("node-a", "node-b")


class FarmMachine(RuleBasedStateMachine):
    def __init__(self, engine: Engine, farm_settings: Settings) -> None:
        super().__init__()
        with engine.begin() as connection:
            for table in reversed(SQLModel.metadata.sorted_tables):
                if table.name != "regions":
                    connection.execute(delete(table))
        self.engine = engine
        self.clock = Clock()
        self.studios = StudioService(engine, farm_settings, self.clock)
        studio, _key = self.studios.create_studio("hypothesis")
        assert studio.id is not None
        self.studio_id = studio.id
        tuned = farm_settings.model_copy(
            update={"dispatch_buffer": 1, "retry_base_seconds": 1.0, "retry_max_seconds": 4.0}
        )
        self.scheduler = Scheduler(engine, tuned, RecordingBroker(), self.clock)
        self.jobs: list[int] = []
        self.sent: list[ChunkMessage] = []
        self._beat()
        self.seen = self._chunk_states()

    def _beat(self) -> None:
        self.scheduler.ingest([heartbeat(name, slots=2) for name in NODES])

    def _chunk_states(self) -> dict[int, ChunkState]:
        with Session(self.engine) as session:
            return {c.id: ChunkState(c.state) for c in session.exec(select(ChunkRow)) if c.id}

    # Studios --------------------------------------------------------------------------

    @rule(frames=st.integers(1, 5), attempts=st.integers(1, 2), failures=st.none() | st.just(1))
    def submit(self, frames: int, attempts: int, failures: int | None) -> None:
        self.jobs.append(
            submit(
                self.studios, self.studio_id, f"1-{frames}",
                max_attempts=attempts, max_failed_frames=failures,
            )
        )  # fmt: skip

    @rule(
        data=st.data(),
        action=st.sampled_from(["cancel", "suspend", "resume", "retry", "reprioritise"]),
    )
    def steer(self, data: st.DataObject, action: str) -> None:
        if not self.jobs:
            return
        job = data.draw(st.sampled_from(self.jobs))
        call: dict[str, Any] = {
            "cancel": self.studios.cancel_job,
            "suspend": self.studios.suspend_job,
            "resume": self.studios.resume_job,
            "retry": self.studios.retry_job,
            "reprioritise": lambda studio, job: self.studios.set_priority(studio, job, 80),
        }
        with contextlib.suppress(RenderfarmError):  # refused (e.g. a finished job): legal
            call[action](self.studio_id, job)

    # The scheduler and its nodes --------------------------------------------------------

    @rule()
    def dispatch(self) -> None:
        self.sent.extend(self.scheduler.dispatch_tick())

    @rule(data=st.data(), kind=st.sampled_from(["started", "finished", "failed"]))
    def node_reports(self, data: st.DataObject, kind: str) -> None:
        """An event of any attempt ever sent: current, duplicate or superseded."""
        if not self.sent:
            return
        message = data.draw(st.sampled_from(self.sent))
        node = message.node or NODES[0]
        if kind == "finished":
            self.scheduler.ingest([finished(message, node)])
        elif kind == "failed":
            self.scheduler.ingest([event("failed", message, node, error="crash", exit_code=1)])
        else:
            self.scheduler.ingest([event("started", message, node)])

    @rule()
    def nodes_lost_and_back(self) -> None:
        self.clock.now += 3600
        self.scheduler.reconcile()
        self._beat()

    @rule()
    def time_passes(self) -> None:
        self.clock.now += 5  # retries' pauses end
        self.scheduler.stop_stale_attempts()
        # once stale attempts are closed, an attempt is open only as its chunk's current
        # one, while the chunk is dispatched or running
        with Session(self.engine) as session:
            for attempt in session.exec(select(AttemptRow)).all():
                if attempt.state in (AttemptState.DISPATCHED, AttemptState.RUNNING):
                    chunk = session.get(ChunkRow, attempt.chunk_id)
                    assert chunk is not None and ChunkState(chunk.state) in ACTIVE_CHUNK_STATES
                    assert attempt.number == chunk.attempts

    # What must always hold ------------------------------------------------------------

    @invariant()
    def each_chunk_moved_once_along_the_table(self) -> None:
        now = self._chunk_states()
        for chunk_id, state in now.items():
            before = self.seen.get(chunk_id)
            if before is not None and before != state:
                assert state in CHUNK_TRANSITIONS[before], (chunk_id, before, state)
        self.seen = now

    @invariant()
    def stored_figures_equal_a_recount(self) -> None:
        with Session(self.engine) as session:
            jobs = session.exec(select(JobRow)).all()
            progress = load_progress(session, jobs)
            for job in jobs:
                assert job.id is not None
                chunks = session.exec(select(ChunkRow).where(ChunkRow.job_id == job.id)).all()
                states = Counter(ChunkState(c.state) for c in chunks)
                derived = derive_job_state(states, suspended=job.suspended, cancelled=job.cancelled)
                assert job.state == derived, (job.id, job.state, states)
                if job.cancelled:
                    assert not states.keys() & {*ACTIVE_CHUNK_STATES, ChunkState.QUEUED}
                results = session.exec(
                    select(FrameResultRow).where(FrameResultRow.job_id == job.id)
                ).all()
                assert progress[job.id].frames_done == len(results)
                assert len({r.frame for r in results}) == len(results)
                for chunk in chunks:
                    if ChunkState(chunk.state) == ChunkState.DONE:
                        assert {r.frame for r in results if r.chunk_id == chunk.id} == set(
                            chunk.frames()
                        )
            for attempt in session.exec(select(AttemptRow)).all():
                chunk = session.get(ChunkRow, attempt.chunk_id)
                assert chunk is not None and attempt.number <= chunk.attempts
                if attempt.state == AttemptState.DONE:
                    assert chunk.state == ChunkState.DONE and attempt.number == chunk.attempts


def test_any_order_of_use_cases_keeps_states_legal_and_counters_true(
    engine: Engine, settings: Settings
) -> None:
    run_state_machine_as_test(
        lambda: FarmMachine(engine, settings),
        settings=settings_for_machine(),
    )


def settings_for_machine() -> Any:
    return hypothesis_settings(
        max_examples=50,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
