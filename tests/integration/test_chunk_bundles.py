"""Chunks that travel several to a message, on a real node (``renderfarm worker``) and a
real scheduler: each renders as its own attempt with its own events; the node's
heartbeat lists each; a bundle is revoked, renderer and all, once all its attempts are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.core.bundles import JobPace
from scheduler.core.states import ChunkState
from scheduler.db import AttemptRow, FrameResultRow
from scheduler.db.transitions import requeue_chunks
from scheduler.dispatch.scheduler import Scheduler
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.wire.broker import CeleryBroker
from scheduler.wire.celery_app import make_celery
from scheduler.wire.events import EVENTS_KEY
from scheduler.wire.messages import (
    BUNDLE_MAX,
    ChunkMessage,
    FinishedEvent,
    FrameReport,
    HeartbeatEvent,
    bundle_task_id,
    decode_event,
    node_queue,
    task_id_for,
)
from tests.conftest import Processes, renderers_running, wait_for
from tests.integration.conftest import Clock, RecordingBroker, event, heartbeat, rows, submit

pytestmark = pytest.mark.integration

NODE = "node-b"


def chunk(index: int, renderer: str = "noop", **settings: Any) -> ChunkMessage:
    return ChunkMessage(
        chunk_id=index,
        attempt=1,
        job_id=1,
        pool="cpu",
        frames=[index],
        renderer=renderer,
        settings=settings,
        output_pattern="jobs/1/frames/frame_{frame}.png",
        log_path=f"jobs/1/logs/chunk-{index}.log",
        timeout=120.0,
        node=NODE,
    )


def events(broker: redis.Redis) -> list[Any]:
    """The events the node published, the newest first (as LPUSH leaves them)."""
    return [decode_event(json.loads(e)) for e in broker.lrange(EVENTS_KEY, 0, -1)]


def rendered(message: ChunkMessage, at: float, seconds: float) -> dict[str, Any]:
    """Its "finished" event: its frames rendered in ``seconds``, ending ``at``."""
    results = [
        FrameReport(f, None, render_seconds=seconds, cpu_seconds=seconds) for f in message.frames
    ]
    return event("finished", message, results=results, started_at=at - seconds, at=at)


def test_a_bundle_renders_each_chunk_as_its_own_attempt(
    processes: Processes, settings: Settings, broker: redis.Redis
) -> None:
    processes.worker(NODE, slots=1)
    sent = [chunk(n) for n in range(1, 7)]
    CeleryBroker(make_celery(settings)).send([sent[:4], sent[4:5], sent[5:]])

    def finished_events() -> list[FinishedEvent]:
        return [e for e in events(broker) if isinstance(e, FinishedEvent)]

    done = wait_for(lambda: len(found := finished_events()) >= 6 and found, 60, "six chunks")
    assert sorted((e.chunk_id, e.attempt) for e in done) == [(n, 1) for n in range(1, 7)]
    assert all([r.frame for r in e.results] == [e.chunk_id] for e in done)
    assert len(finished_events()) == 6, processes.log(NODE)  # each once


SLOW = {"width": 1920, "height": 1080, "samples": 16}  # a built-in frame of seconds


def newest_beat(broker: redis.Redis) -> HeartbeatEvent | None:
    beats = [e for e in events(broker) if isinstance(e, HeartbeatEvent)]
    return beats[0] if beats else None  # LPUSH: the newest first


def test_a_bundle_is_listed_by_attempt_and_goes_on_until_its_own_id_is_revoked(
    processes: Processes, settings: Settings, broker: redis.Redis
) -> None:
    """A slow frame first, then two no-op chunks behind it in the node's only slot."""
    processes.worker(NODE, slots=1)
    celery = CeleryBroker(make_celery(settings))
    bundle = [chunk(1, "builtin", **SLOW), chunk(2), chunk(3)]
    attempts = [task_id_for(m.chunk_id, m.attempt) for m in bundle]
    celery.send([bundle])
    wait_for(lambda: renderers_running(1), 60, "the slow frame to start")
    wait_for(
        lambda: (beat := newest_beat(broker)) and set(attempts) <= set(beat.tasks or ()),
        10,
        "a heartbeat listing all three",
    )
    # The chunks behind the slow frame go back to the queue, one a message.
    wait_for(lambda: "handed back" in processes.log(NODE), 10, "the bundle to hand back")
    revoked_at = time.time()
    celery.revoke(attempts)  # each attempt, not the bundle: the frame renders on
    wait_for(
        lambda: (beat := newest_beat(broker)) and (beat.at or 0) > revoked_at + 0.3,
        10,
        "a heartbeat after the revoke",
    )
    assert renderers_running(1) and attempts[0] in (newest_beat(broker).tasks or ())  # type: ignore[union-attr]
    celery.revoke([bundle_task_id([(m.chunk_id, m.attempt) for m in bundle])])
    wait_for(lambda: not renderers_running(1), 5, "the renderer to be killed")
    assert not (settings.storage_root / "jobs/1/frames/frame_000001.png").exists()
    # The two handed back were revoked by their own ids: the node, its slot free again,
    # takes them from its queue and drops them unread.
    wait_for(lambda: broker.llen(node_queue(NODE)) == 0, 20, "the node to take them")
    taken_at = time.time()
    wait_for(
        lambda: (
            (beat := newest_beat(broker)) and (beat.at or 0) > taken_at + 0.5 and not beat.tasks
        ),
        10,
        "a heartbeat of the node holding nothing",
    )
    assert not [e for e in events(broker) if isinstance(e, FinishedEvent)]


def test_a_bundle_slower_than_its_pace_hands_its_other_chunks_to_the_nodes_other_slots(
    processes: Processes, settings: Settings, broker: redis.Redis
) -> None:
    processes.worker(NODE, slots=2)
    CeleryBroker(make_celery(settings)).send([[chunk(1, "builtin", **SLOW), chunk(2), chunk(3)]])
    wait_for(lambda: renderers_running(1), 60, "the slow frame to start")
    done = wait_for(
        lambda: {e.chunk_id for e in events(broker) if isinstance(e, FinishedEvent)} >= {2, 3},
        20,
        "the chunks behind the slow frame to render on the other slot",
    )
    assert done and renderers_running(1), "handed back only after the slow frame"
    wait_for(lambda: any(e.chunk_id == 1 for e in events(broker) if isinstance(e, FinishedEvent)),
             120, "the slow frame")  # fmt: skip
    finished = [e.chunk_id for e in events(broker) if isinstance(e, FinishedEvent)]
    assert sorted(finished) == [1, 2, 3]  # each once


@dataclass
class ShortJob:
    """A job of 1 ms chunks on a node of 4 slots, dispatched until its pace was known
    (``before``: one chunk a message), then once more (``after``)."""

    scheduler: Scheduler
    broker: RecordingBroker
    clock: Clock
    before: list[ChunkMessage]
    after: list[ChunkMessage]

    @property
    def bundles(self) -> dict[str, list[ChunkMessage]]:
        """The bundles of the last tick, by task id."""
        return {
            bundle_task_id([(m.chunk_id, m.attempt) for m in message]): message
            for message in self.broker.messages
            if len(message) > 1
        }

    def ingest_rendered(self, messages: list[ChunkMessage]) -> None:
        self.clock.now += 0.5
        self.scheduler.ingest([rendered(m, self.clock.now, 0.001) for m in messages])


def dispatch_short_job(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
    bundle: int,
) -> ShortJob:
    """``bundle``: how many chunks a message the node says it takes."""
    submit(studios, studio_id, "1-400")
    scheduler.ingest([heartbeat(slots=4, bundle=bundle)])
    job = ShortJob(scheduler, fake_broker, clock, [], [])
    while len(job.before) < JobPace.SEEN:  # until its pace is known: one chunk a message
        fake_broker.messages.clear()
        job.before += (tick := scheduler.dispatch_tick())
        assert tick and all(len(message) == 1 for message in fake_broker.messages)
        job.ingest_rendered(tick)
    fake_broker.messages.clear()
    job.after = scheduler.dispatch_tick()
    return job


@pytest.fixture
def short(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
) -> ShortJob:
    return dispatch_short_job(scheduler, fake_broker, studios, studio_id, clock, BUNDLE_MAX)


def test_a_jobs_chunks_go_together_once_its_pace_shows_them_short(
    short: ShortJob, engine: Engine
) -> None:
    sizes = [len(message) for message in short.broker.messages]
    assert max(sizes) > 1 and sum(sizes) == len(short.after), sizes
    assert len(sizes) >= 4 and max(sizes) <= BUNDLE_MAX  # one a slot, at least
    assert short.scheduler.messages_in_last_tick == len(sizes)  # the operator's metric
    for message in short.broker.messages:
        assert {(m.node, m.job_id) for m in message} == {("node-a", message[0].job_id)}
    # Each chunk its own attempt: rendering them, in any grouping, is counted once each.
    short.ingest_rendered(short.after)
    with Session(engine) as session:
        done = session.exec(select(AttemptRow).where(AttemptRow.state == "done")).all()
        results = session.exec(select(FrameResultRow)).all()
    assert len(done) == len(results) == len(short.before) + len(short.after)


def test_each_attempt_records_the_bundle_that_carried_it(short: ShortJob, engine: Engine) -> None:
    carried = {(m.chunk_id, m.attempt): bundle for bundle, ms in short.bundles.items()
               for m in ms}  # fmt: skip
    singles = [m[0] for m in short.broker.messages if len(m) == 1]
    assert carried and {(m.chunk_id, m.attempt) for m in [*short.before, *singles]} == {
        (m.chunk_id, m.attempt) for m in short.broker.sent
    } - set(carried)
    for attempt in rows(engine, AttemptRow):
        assert attempt.message == carried.get((attempt.chunk_id, attempt.number))


def test_a_cancel_revokes_a_bundle_though_some_of_its_chunks_rendered(
    short: ShortJob, studios: StudioService, studio_id: int
) -> None:
    bundles = short.bundles
    firsts = [message[0] for message in bundles.values()]
    short.ingest_rendered(firsts)  # one of each rendered
    studios.cancel_job(studio_id, firsts[0].job_id)
    revoked = short.scheduler.stop_stale_attempts()
    assert set(bundles) <= set(revoked)
    open_ones = {task_id_for(m.chunk_id, m.attempt) for ms in bundles.values() for m in ms[1:]}
    assert open_ones <= set(revoked)  # and each attempt by its own id, handed back or not
    assert not {task_id_for(m.chunk_id, m.attempt) for m in firsts} & set(revoked)


def requeue(engine: Engine, messages: list[ChunkMessage], now: float) -> None:
    """Send these chunks again (their messages lost, say): new attempts."""
    with Session(engine) as session:
        requeue_chunks(session, [m.chunk_id for m in messages], [ChunkState.DISPATCHED], now)
        session.commit()


def test_a_bundle_goes_on_while_it_carries_a_chunk_still_wanted(
    short: ShortJob, engine: Engine
) -> None:
    """One chunk of a bundle sent again: its old attempt is revoked, not the bundle that
    carries the others."""
    bundle, message = next(iter(short.bundles.items()))
    requeue(engine, message[:1], short.clock.now)
    revoked = short.scheduler.stop_stale_attempts()
    assert revoked == [task_id_for(message[0].chunk_id, message[0].attempt)]
    requeue(engine, message[1:], short.clock.now)
    assert bundle in short.scheduler.stop_stale_attempts()  # now none of it is wanted


def test_a_bundle_that_renders_after_its_attempts_closed_is_stopped_at_its_first_event(
    short: ShortJob, engine: Engine
) -> None:
    """Its node was away when the bundle was revoked, and Celery brought it back."""
    bundle, message = next(iter(short.bundles.items()))
    requeue(engine, message, short.clock.now)
    short.scheduler.stop_stale_attempts()
    short.broker.revoked.clear()  # that revoke was lost
    short.scheduler.ingest([event("started", message[0], at=short.clock.now)])
    assert sorted(short.broker.revoked) == sorted(
        [task_id_for(message[0].chunk_id, message[0].attempt), bundle]
    )


def test_a_node_of_an_older_renderfarm_gets_one_chunk_a_message(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
) -> None:
    """Its heartbeat says nothing of bundles (``bundle`` 1, the default): it has no
    ``render_chunks`` task, and would drop such a message unread."""
    job = dispatch_short_job(scheduler, fake_broker, studios, studio_id, clock, 1)
    assert len(job.after) > 4 and all(len(message) == 1 for message in fake_broker.messages)


def test_a_job_of_real_renders_goes_one_chunk_a_message(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
) -> None:
    job_id = submit(studios, studio_id, "1-400")
    scheduler.ingest([heartbeat(slots=4, bundle=BUNDLE_MAX)])
    for _ in range(4):
        tick = scheduler.dispatch_tick()
        clock.now += 2.0
        beat = heartbeat(slots=4, bundle=BUNDLE_MAX)
        scheduler.ingest([beat, *(rendered(m, clock.now, 1.5) for m in tick)])
    assert len(fake_broker.sent) > JobPace.SEEN
    assert scheduler.paces.bundle_size(job_id, 0.05, BUNDLE_MAX) == 1
    assert all(len(message) == 1 for message in fake_broker.messages)
