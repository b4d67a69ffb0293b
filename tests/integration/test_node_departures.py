"""A node's own word on going (``HeartbeatEvent.life``), at the scheduler: "leaving" sends
the chunks still waiting in its Celery queue elsewhere at once and gives it nothing new;
"left" sends everything it held elsewhere at once, as superseded attempts (no retry
spent); a leaving node that falls silent is lost as any other; nodes long gone are
forgotten. The same with real processes: tests/end_to_end/test_scale_down.py."""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import AttemptRow, NodeRow
from scheduler.dispatch.scheduler import FORGET_EVERY_SECONDS, Scheduler
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService
from scheduler.wire.broker import CeleryBroker
from scheduler.wire.celery_app import make_celery
from scheduler.wire.messages import ChunkMessage, HeartbeatEvent, NodeReport, task_id_for
from tests.integration.conftest import (
    Clock,
    RecordingBroker,
    event,
    finished,
    heartbeat,
    submit,
)


def beat(name: str, life: str, holding: list[ChunkMessage], slots: int = 1) -> dict[str, Any]:
    """A heartbeat of ``name`` saying ``life``, listing the attempts it holds."""
    info = NodeReport(name, "cpu", "host", slots, len(holding), cores=8, memory_bytes=2**34)
    tasks = [task_id_for(m.chunk_id, m.attempt) for m in holding]
    return HeartbeatEvent(node=name, info=info, tasks=tasks, at=1.0, life=life).to_dict()


def states(studios: StudioService) -> dict[str, str]:
    return {n.name: n.state for n in studios.list_nodes()}


def attempts_of(engine: Engine, job_id: int) -> dict[tuple[int, int], AttemptRow]:
    with Session(engine) as session:
        rows = session.exec(select(AttemptRow).where(col(AttemptRow.job_id) == job_id)).all()
    return {(a.chunk_id, a.number): a for a in rows}


def test_a_leaving_node_keeps_what_it_runs_and_its_queue_goes_elsewhere_at_once(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    fake_broker: RecordingBroker,
) -> None:
    job_id = submit(studios, studio_id, "1-4")
    scheduler.ingest([heartbeat("node-a", slots=1)])
    sent = scheduler.dispatch_tick()  # its slot and a buffer
    assert len(sent) >= 2 and {m.node for m in sent} == {"node-a"}
    running, waiting = sent[0], sent[1:]
    scheduler.ingest([event("started", running, "node-a")])

    scheduler.ingest([beat("node-a", "leaving", [running])])
    assert states(studios)["node-a"] == "leaving"
    scheduler.ingest([heartbeat("node-b", slots=4)])
    again = scheduler.dispatch_tick()
    assert {m.node for m in again} == {"node-b"}  # nothing new for node-a
    assert {(m.chunk_id, m.attempt) for m in again} >= {(m.chunk_id, 2) for m in waiting}
    assert running.chunk_id not in {m.chunk_id for m in again}  # it finishes there
    scheduler.stop_stale_attempts()
    assert set(fake_broker.revoked) == {task_id_for(m.chunk_id, 1) for m in waiting}

    assert fake_broker.dropped == []
    scheduler.ingest([beat("node-a", "left", [])])  # its drain ran out: handed back
    assert states(studios)["node-a"] == "left"
    assert fake_broker.dropped == ["node.node-a"]  # its queue: stale messages only
    handed = scheduler.dispatch_tick()
    assert [(m.chunk_id, m.attempt, m.node) for m in handed] == [(running.chunk_id, 2, "node-b")]
    scheduler.stop_stale_attempts()
    first = attempts_of(engine, job_id)[(running.chunk_id, 1)]
    assert first.state == "superseded"  # not failed: handing back spends no retry


def test_a_leaving_node_that_finishes_says_left_and_loses_nothing(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
) -> None:
    job_id = submit(studios, studio_id, "1")
    scheduler.ingest([heartbeat("node-a", slots=1)])
    (only,) = scheduler.dispatch_tick()
    scheduler.ingest([event("started", only, "node-a"), beat("node-a", "leaving", [only])])
    scheduler.ingest([finished(only, "node-a"), beat("node-a", "left", [])])
    assert attempts_of(engine, job_id)[(only.chunk_id, 1)].state == "done"
    assert studios.get_job(studio_id, job_id).job.state == "done"
    assert states(studios) == {"node-a": "left"}


def test_a_leaving_node_that_falls_silent_is_lost_and_one_that_left_is_not(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
    settings: Settings,
) -> None:
    scheduler.ingest([beat("node-a", "leaving", []), beat("node-b", "left", [])])
    clock.now += settings.node_timeout + 1
    scheduler.reconcile()
    assert states(studios) == {"node-a": "lost", "node-b": "left"}
    scheduler.ingest([heartbeat("node-b", slots=1)])  # started again under its name
    assert states(studios)["node-b"] == "online"
    submit(studios, studio_id, "1")
    assert [m.node for m in scheduler.dispatch_tick()] == ["node-b"]


def test_nodes_long_gone_are_forgotten_but_not_one_that_holds_a_chunk(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    clock: Clock,
    settings: Settings,
) -> None:
    submit(studios, studio_id, "1")
    scheduler.ingest([heartbeat("node-held", slots=1)])
    scheduler.dispatch_tick()
    scheduler.ingest([beat("node-left", "left", []), beat("node-lost", "leaving", [])])
    scheduler.ingest([beat("node-kept", "left", [])])
    OperatorService(engine, clock).set_node("node-kept", "disable")
    with Session(engine) as session:  # a dispatch that raced its leaving: still holds one
        session.exec(update(NodeRow).where(col(NodeRow.name) == "node-held").values(state="left"))
        session.commit()
    clock.now += settings.forget_nodes_after + FORGET_EVERY_SECONDS
    scheduler.ingest([heartbeat("node-up", slots=1), beat("node-recent", "left", [])])
    scheduler.reconcile()
    assert states(studios) == {
        "node-held": "left",
        "node-up": "online",
        "node-recent": "left",
        "node-kept": "left",
    }  # node-kept: an operator disabled it; should the machine come back, it stays so
    dropped = set(fake_broker.dropped)  # forgotten: their queues too (left: at its word)
    assert {"node.node-left", "node.node-lost"} <= dropped
    assert not dropped & {"node.node-held", "node.node-up"}


def test_the_queue_of_a_node_that_left_is_dropped_from_redis(
    engine: Engine, settings: Settings, broker: redis.Redis
) -> None:
    celery = CeleryBroker(make_celery(settings))
    message = ChunkMessage(
        chunk_id=1, attempt=1, job_id=1, pool="cpu", frames=[1], renderer="noop",
        settings={}, output_pattern="f{frame}", log_path="l", timeout=60.0, node="node-a",
    )  # fmt: skip
    celery.send([[message], [message]])
    assert celery.queue_depths(["node.node-a"]) == {"node.node-a": 2}
    celery.drop_queues(["node.node-a"])
    assert celery.queue_depths(["node.node-a"]) == {"node.node-a": 0}
