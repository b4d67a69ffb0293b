"""The faults of a night on a real farm, with real processes on real Redis: a node
killed mid-chunk, Redis losing everything, the active scheduler killed with a standby
waiting. Every frame must end rendered exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import ChunkRow, FrameResultRow
from scheduler.service import JobRequest, StudioService
from scheduler.settings import Settings
from tests.conftest import Processes, renderers_running, wait_for

pytestmark = pytest.mark.end_to_end


@pytest.fixture
def studio(engine: Engine, settings: Settings) -> tuple[StudioService, int]:
    service = StudioService(engine, settings)
    studio, _key = service.create_studio("night-shift")
    assert studio.id is not None
    return service, studio.id


def submit(
    studio: tuple[StudioService, int], frames: str, width: int = 320, samples: int = 1
) -> int:
    service, studio_id = studio
    settings = {"width": width, "height": width * 9 // 16, "samples": samples}
    job = service.submit_job(
        studio_id, JobRequest("fault", frames, 1, 50, "cpu", "builtin", settings)
    )
    assert job.id is not None
    return job.id


def wait_done(studio: tuple[StudioService, int], job_id: int, timeout: float = 180) -> None:
    service, studio_id = studio
    state = wait_for(
        lambda: (s := service.get_job(studio_id, job_id).job.state) in ("done", "failed") and s,
        timeout,
        f"job {job_id} to finish",
    )
    assert state == "done"


def frames_done(studio: tuple[StudioService, int], job_id: int) -> int:
    service, studio_id = studio
    return service.get_job(studio_id, job_id).progress.frames_done


def assert_rendered_once(engine: Engine, job_id: int, frames: int) -> None:
    with Session(engine) as session:
        rows = session.exec(
            select(FrameResultRow.frame).where(FrameResultRow.job_id == job_id)
        ).all()
    assert sorted(rows) == list(range(1, frames + 1))


def test_a_node_killed_mid_chunk_loses_no_frame(
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    settings: Settings,
) -> None:
    doomed = processes.worker("node-doomed")
    processes.start("scheduler", "scheduler")
    wait_for(lambda: studio[0].list_nodes(), 60, "the first node")
    job_id = submit(studio, "1-6", width=960, samples=2)  # seconds per frame
    renderer = wait_for(renderers_running, 60, "node-doomed to start rendering")[0]
    wait_for(lambda: time.time() - renderer.create_time() > 0.5, 10, "the render to be underway")
    os.killpg(doomed.pid, signal.SIGKILL)  # the node vanishes: worker, pool, renderer
    wait_for(lambda: not renderer.is_running(), 10, "its renderer to die with it")
    processes.worker("node-survivor")
    wait_for(
        lambda: {n.name: n.state for n in studio[0].list_nodes()}.get("node-doomed") == "lost",
        settings.node_timeout + 30,
        "node-doomed to be declared lost",
    )
    wait_done(studio, job_id)
    assert_rendered_once(engine, job_id, 6)
    with Session(engine) as session:
        results = session.exec(select(FrameResultRow).where(FrameResultRow.job_id == job_id)).all()
        retried = session.exec(select(func.max(ChunkRow.attempts))).one()
    assert retried >= 2  # the chunk killed mid-render was rendered again
    assert {r.node for r in results} >= {"node-survivor"}
    wait_for(lambda: not renderers_running(), 10, "no renderer left behind")


def test_redis_losing_everything_mid_job_loses_no_frame(
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    broker: redis.Redis,
) -> None:
    processes.start("scheduler", "scheduler")
    processes.worker("node-1")
    processes.worker("node-2")
    wait_for(lambda: len(studio[0].list_nodes()) == 2, 60, "two nodes")
    job_id = submit(studio, "1-16")
    wait_for(lambda: frames_done(studio, job_id) >= 3, 120, "a few frames")
    broker.flushdb()  # queues, events, unacked messages and the leader lock: all gone
    wait_done(studio, job_id)
    assert_rendered_once(engine, job_id, 16)


def test_a_standby_scheduler_takes_over(
    processes: Processes, studio: tuple[StudioService, int], engine: Engine
) -> None:
    active = processes.start("scheduler-a", "scheduler")
    wait_for(lambda: "leading as" in processes.log("scheduler-a"), 60, "scheduler-a to lead")
    processes.start("scheduler-b", "scheduler")
    processes.worker("node-1")
    wait_for(lambda: studio[0].list_nodes(), 60, "the node")
    job_id = submit(studio, "1-12")
    wait_for(lambda: frames_done(studio, job_id) >= 2, 120, "a few frames")
    assert "leading as" not in processes.log("scheduler-b")  # it stood by
    os.killpg(active.pid, signal.SIGKILL)
    wait_for(lambda: "leading as" in processes.log("scheduler-b"), 30, "scheduler-b to lead")
    wait_done(studio, job_id)
    assert_rendered_once(engine, job_id, 12)
    with Session(engine) as session:
        chunks = session.exec(select(ChunkRow).where(col(ChunkRow.job_id) == job_id)).all()
    assert {c.state for c in chunks} == {"done"}
