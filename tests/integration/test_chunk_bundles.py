"""Chunks that travel several to a message, on a real node (``renderfarm worker``) and a
real scheduler: each renders as its own attempt with its own events; the node's
heartbeat lists each; a bundle is revoked, renderer and all, once all its attempts are.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.core.bundles import JobPace
from scheduler.db import AttemptRow, FrameResultRow
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
    decode_event,
    task_id_for,
)
from tests.conftest import Processes, renderers_running, wait_for
from tests.integration.conftest import Clock, RecordingBroker, event, heartbeat, submit

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


def test_the_heartbeat_lists_a_bundles_attempts_and_a_revoke_of_them_all_stops_it(
    processes: Processes, settings: Settings, broker: redis.Redis
) -> None:
    """A frame of ~10 s first, then two no-op chunks behind it in the same slot."""
    processes.worker(NODE, slots=1)
    celery = CeleryBroker(make_celery(settings))
    slow = chunk(1, "builtin", width=1920, height=1080, samples=16)
    bundle = [slow, chunk(2), chunk(3)]
    attempts = [task_id_for(m.chunk_id, m.attempt) for m in bundle]
    celery.send([bundle])
    wait_for(lambda: renderers_running(1), 60, "the slow frame to start")

    def listed() -> set[str]:
        beats = [e for e in events(broker) if isinstance(e, HeartbeatEvent)]
        return set(beats[0].tasks or ()) if beats else set()  # LPUSH: the newest first

    wait_for(lambda: set(attempts) <= listed(), 10, "a heartbeat listing all three")
    celery.revoke(attempts[1:])  # the slow chunk is still wanted: the bundle goes on
    celery.revoke(attempts[:1])
    wait_for(lambda: not renderers_running(1), 5, "the renderer to be killed")
    assert not (settings.storage_root / "jobs/1/frames/frame_000001.png").exists()
    assert not [e for e in events(broker) if isinstance(e, FinishedEvent)]


def short_job_sent(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
    bundle: int,
) -> tuple[list[ChunkMessage], list[ChunkMessage]]:
    """A job of 1 ms chunks on a node of 4 slots that takes ``bundle`` chunks a message:
    what went before its pace was known, and the tick after."""
    submit(studios, studio_id, "1-400")
    scheduler.ingest([heartbeat(slots=4, bundle=bundle)])
    sent: list[ChunkMessage] = []
    while len(sent) < JobPace.SEEN:  # until the job's pace is known: one chunk a message
        fake_broker.messages.clear()
        sent += (tick := scheduler.dispatch_tick())
        assert tick and all(len(message) == 1 for message in fake_broker.messages)
        clock.now += 0.5
        scheduler.ingest([rendered(m, clock.now, 0.001) for m in tick])
    fake_broker.messages.clear()
    return sent, scheduler.dispatch_tick()


def test_a_jobs_chunks_go_together_once_its_pace_shows_them_short(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    engine: Engine,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
) -> None:
    sent, again = short_job_sent(scheduler, fake_broker, studios, studio_id, clock, BUNDLE_MAX)
    sizes = [len(message) for message in fake_broker.messages]
    assert max(sizes) > 1 and sum(sizes) == len(again), sizes
    assert len(sizes) >= 4 and max(sizes) <= BUNDLE_MAX  # one a slot, at least
    assert scheduler.messages_in_last_tick == len(sizes)  # the operator's metric
    for message in fake_broker.messages:
        assert {(m.node, m.job_id) for m in message} == {("node-a", message[0].job_id)}
    # Each chunk its own attempt: rendering them, in any grouping, is counted once each.
    clock.now += 0.5
    scheduler.ingest([rendered(m, clock.now, 0.001) for m in again])
    ended = {task_id_for(m.chunk_id, m.attempt) for m in [*sent, *again]}
    assert set(fake_broker.ended_attempts) == ended  # no bundle waits for them
    with Session(engine) as session:
        done = session.exec(select(AttemptRow).where(AttemptRow.state == "done")).all()
        results = session.exec(select(FrameResultRow)).all()
    assert len(done) == len(results) == len(sent) + len(again)


def test_a_node_of_an_older_renderfarm_gets_one_chunk_a_message(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
) -> None:
    """Its heartbeat says nothing of bundles (``bundle`` 1, the default): it has no
    ``render_chunks`` task, and would drop such a message unread."""
    _, again = short_job_sent(scheduler, fake_broker, studios, studio_id, clock, 1)
    assert len(again) > 4 and all(len(message) == 1 for message in fake_broker.messages)


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
