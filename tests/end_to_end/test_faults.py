"""The faults of a night on a real farm, with real processes on real Redis: a node
killed mid-chunk, Redis losing everything, the active scheduler killed with a standby
waiting, the API killed mid-submission. Every frame must end rendered exactly once,
and every job must exist whole or not at all."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import httpx
import pytest
import redis
from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import ChunkRow, FrameResultRow, JobRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, free_port, renderers_running, wait_for

pytestmark = pytest.mark.end_to_end


def submit(
    studio: tuple[StudioService, int], frames: str, width: int = 320, samples: int = 1
) -> int:
    service, studio_id = studio
    renderer = {"kind": "builtin", "width": width, "height": width * 9 // 16, "samples": samples}
    request = JobRequest.model_validate({"name": "fault", "frames": frames, "renderer": renderer})
    job = service.submit_job(studio_id, request)
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


def test_an_api_killed_mid_submission_leaves_whole_jobs_or_none(
    processes: Processes, engine: Engine, settings: Settings
) -> None:
    """Submissions of 20,000-frame jobs in flight while the API is killed -9: every
    job that exists has all its chunks."""
    service = StudioService(engine, settings)
    _studio, key = service.create_studio("impatient")
    port = free_port()
    api = processes.start("api", "api", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), 60, "the API")
    body = {"name": "big", "frames": "1-20000", "renderer": {"kind": "noop"}}
    headers = {"Authorization": f"Bearer {key}"}

    def submit_until_killed() -> None:
        with contextlib.suppress(httpx.HTTPError):
            for _ in range(50):
                httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=30)

    threads = [threading.Thread(target=submit_until_killed) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: _job_count(engine) >= 2, 60, "a few jobs to be created")
    os.killpg(api.pid, signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=60)
    with Session(engine) as session:
        jobs = session.exec(select(JobRow)).all()
        frames: dict[int, int] = {
            job_id: total
            for job_id, total in session.execute(
                sql_select(col(ChunkRow.job_id), func.sum(ChunkRow.frame_count)).group_by(
                    col(ChunkRow.job_id)
                )
            )
        }
    assert jobs and all(frames.get(job.id) == job.frame_count == 20000 for job in jobs)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _job_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(JobRow)).one()
