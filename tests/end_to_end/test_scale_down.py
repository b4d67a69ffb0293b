"""A render node told to stop (SIGTERM to its main process only, as Kubernetes does when
it scales a pool down) takes no new chunk, finishes or hands back those it runs within
its drain time, and what it will not render is queued again at once: these tests set
the node timeout and the resend delay to ten minutes, so a job finishes only if that
path works. Real processes on real Redis; every frame rendered exactly once."""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import AttemptRow, FrameResultRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.conftest import Processes, renderers_running, wait_for
from tests.end_to_end.test_faults import assert_rendered_once, submit, wait_done

pytestmark = pytest.mark.end_to_end

NEVER = 600.0  # seconds: the node timeout and resend delay, out of these tests' reach


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"node_timeout": NEVER, "redispatch_after": NEVER})


def node_state(studio: tuple[StudioService, int], name: str) -> str | None:
    return {n.name: n.state for n in studio[0].list_nodes()}.get(name)


def stop_like_kubernetes(worker: subprocess.Popen[bytes]) -> float:
    """SIGTERM to the worker's main process (PID 1 of its container), not its group."""
    worker.send_signal(signal.SIGTERM)
    return time.time()


def attempts(engine: Engine, job_id: int) -> list[AttemptRow]:
    with Session(engine) as session:
        return list(session.exec(select(AttemptRow).where(col(AttemptRow.job_id) == job_id)))


def rendering(
    processes: Processes, studio: tuple[StudioService, int], settings: Settings, drain: float
) -> tuple[subprocess.Popen[bytes], int, psutil.Process]:
    """A node of ``drain`` s, the scheduler, and a job of seconds a frame rendering on
    it: the node's process, the job, the renderer running."""
    processes.settings = settings.model_copy(update={"drain_seconds": drain})
    leaving = processes.worker("node-leaving")
    processes.start("scheduler", "scheduler")
    wait_for(lambda: node_state(studio, "node-leaving") == "online", 60, "the node")
    job_id = submit(studio, "1-6", width=960, samples=2)  # seconds a frame
    renderer = wait_for(lambda: renderers_running(job_id), 60, "a render to start")[0]
    return leaving, job_id, renderer


def test_a_node_stopped_mid_chunk_hands_it_back_at_once(
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    settings: Settings,
) -> None:
    leaving, job_id, renderer = rendering(processes, studio, settings, drain=1.0)
    stop_like_kubernetes(leaving)
    wait_for(lambda: node_state(studio, "node-leaving") == "left", 30, "the node to say it left")
    assert leaving.wait(30) == 0  # it ended by itself, having handed its chunk back
    wait_for(lambda: not renderer.is_running(), 10, "its renderer to end with it")

    processes.worker("node-survivor")  # only now: everything else waited for it
    wait_done(studio, job_id, timeout=240)
    assert_rendered_once(engine, job_id, 6)
    ended = attempts(engine, job_id)
    handed_back = [a for a in ended if a.node == "node-leaving" and a.state != "done"]
    assert handed_back, "the chunk it was rendering should have been handed back"
    assert {a.state for a in handed_back} == {"superseded"}  # not failed: no retry spent
    with Session(engine) as session:
        rendered_by = set(session.exec(select(FrameResultRow.node).where(
            FrameResultRow.job_id == job_id)))  # fmt: skip
    assert rendered_by == {"node-survivor"}
    assert "handing back 1 chunk(s)" in processes.log("node-leaving")


def test_a_node_stopped_mid_chunk_finishes_it_within_its_drain_time(
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    settings: Settings,
) -> None:
    leaving, job_id, _ = rendering(processes, studio, settings, drain=120.0)
    told = stop_like_kubernetes(leaving)
    wait_for(lambda: node_state(studio, "node-leaving") in ("leaving", "left"), 30, "leaving")
    assert leaving.wait(100) == 0  # it ended once its chunk finished, not at the drain's end
    assert node_state(studio, "node-leaving") == "left"

    finished_there = [
        a
        for a in attempts(engine, job_id)
        if a.node == "node-leaving" and a.state == "done" and (a.finished_at or 0) > told
    ]
    assert finished_there, "the chunk it was rendering should have finished there"
    processes.worker("node-survivor")
    wait_done(studio, job_id, timeout=240)
    assert_rendered_once(engine, job_id, 6)
    assert not any(a.state == "failed" for a in attempts(engine, job_id))
    assert "handing back" not in processes.log("node-leaving")
