"""Fixtures of the integration tests that drive the scheduler's use cases directly:
a settable clock, a recording broker, and helpers that write node events: typed
events of scheduler/wire/messages.py, encoded as a node sends them."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from api.app import create_app
from scheduler.dispatch.loop import run_scheduler
from scheduler.dispatch.scheduler import Scheduler
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.messages import (
    ChunkEvent,
    ChunkMessage,
    FailedEvent,
    FinishedEvent,
    FrameEvent,
    FrameReport,
    HeartbeatEvent,
    NodeReport,
    StartedEvent,
)

CHUNK_EVENTS: dict[str, type[ChunkEvent]] = {
    cls.kind: cls for cls in (StartedEvent, FrameEvent, FinishedEvent, FailedEvent)
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingBroker:
    """Keeps what the scheduler sent and revoked; pretends the queue holds what was sent."""

    def __init__(self) -> None:
        self.sent: list[ChunkMessage] = []
        self.messages: list[list[ChunkMessage]] = []  # as they would go: one, or a bundle
        self.revoked: list[str] = []
        self.dropped: list[str] = []
        self.depth = 0

    def send(self, messages: Sequence[Sequence[ChunkMessage]]) -> None:
        self.messages += [list(chunks) for chunks in messages]
        self.sent.extend(chunk for chunks in messages for chunk in chunks)

    def revoke(self, task_ids: Sequence[str]) -> None:
        self.revoked.extend(task_ids)

    def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        return dict.fromkeys(queues, self.depth)

    def drop_queues(self, queues: Sequence[str]) -> None:
        self.dropped.extend(queues)


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    """The API app over the test's database, in the test's process."""
    with TestClient(create_app(settings, engine)) as test_client:
        yield test_client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def studios(engine: Engine, settings: Settings, clock: Clock) -> StudioService:
    return StudioService(engine, settings, clock)


@pytest.fixture
def studio_id(studios: StudioService) -> int:
    studio, _key = studios.create_studio("pixar-east")
    assert studio.id is not None
    return studio.id


def submit(studios: StudioService, studio_id: int, frames: str = "1-20", **extra: Any) -> int:
    request = JobRequest.model_validate(
        {"name": "shot", "frames": frames, "pool": "cpu", "renderer": {"kind": "noop"}, **extra}
    )
    job = studios.submit_job(studio_id, request)
    assert job.id is not None
    return job.id


def heartbeat(
    name: str = "node-a", slots: int = 2, running: int = 0, **hardware: Any
) -> dict[str, Any]:
    info = NodeReport(
        name, "cpu", "host", slots, running, **{"cores": 8, "memory_bytes": 2**34, **hardware}
    )
    return HeartbeatEvent(node=name, info=info).to_dict()


def event(kind: str, message: ChunkMessage, node: str = "node-a", **fields: Any) -> dict[str, Any]:
    """The ``kind`` event of the message's attempt, with ``fields`` of that kind."""
    typed = CHUNK_EVENTS[kind](
        chunk_id=message.chunk_id,
        attempt=message.attempt,
        job_id=message.job_id,
        node=node,
        **fields,
    )
    return typed.to_dict()


def finished(message: ChunkMessage, node: str = "node-a") -> dict[str, Any]:
    results = [FrameReport(f, None, render_seconds=1.5, cpu_seconds=1.2) for f in message.frames]
    return event("finished", message, node, results=results)


def rows(engine: Engine, model: Any, **where: Any) -> list[Any]:
    with Session(engine) as session:
        query = select(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return list(session.exec(query))


def count(engine: Engine, model: Any) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


@pytest.fixture
def fake_broker() -> RecordingBroker:
    return RecordingBroker()


@pytest.fixture
def scheduler(
    engine: Engine, settings: Settings, fake_broker: RecordingBroker, clock: Clock
) -> Scheduler:
    tuned = settings.model_copy(
        update={"dispatch_buffer": 1, "retry_base_seconds": 5.0, "retry_max_seconds": 60.0}
    )
    return Scheduler(engine, tuned, fake_broker, clock)


@pytest.fixture
def scheduler_loop(engine: Engine, settings: Settings, broker: redis.Redis) -> Iterator[None]:
    """The real scheduler loop in a thread of the test, for tests with real nodes."""
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(settings, stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)
