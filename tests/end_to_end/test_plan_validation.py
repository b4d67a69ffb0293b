"""The planner against the farm it plans for: a small workload simulated, then rendered
by the farm's real processes (a scheduler and two nodes of two slots each) with
``noop`` frames that take the same seconds; the makespan and the frames per node agree
within 10%."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.core.energy import RegionFigures
from scheduler.core.planner import Shot, SimRegion, simulate
from scheduler.core.signals import RegionSignals
from scheduler.core.siting import FASTEST
from scheduler.db import AttemptRow, FrameResultRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, wait_for

pytestmark = pytest.mark.end_to_end

SECONDS = 3.0  # long enough that the farm's own noise stays well inside 10%
SHOTS = [("sh010", 12), ("sh020", 12), ("sh030", 12)]


def test_the_planners_makespan_and_frames_per_node_match_the_farms(
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    settings: Settings,
) -> None:
    figures = RegionFigures(1.2, 0.35, 24.0)
    nodes = [SimRegion(RegionSignals.flat(name, figures), 2) for name in ("node-1", "node-2")]
    workload = [Shot(name, frames, SECONDS, 1.0) for name, frames in SHOTS]
    # A slot waits about a scheduler tick between frames (dispatch, the event back).
    planned = simulate(workload, nodes, FASTEST, "fastest", time.time(), settings.tick_seconds)

    service, studio_id = studio
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=2)
    processes.worker("node-2", slots=2)
    wait_for(lambda: len(service.list_nodes()) == 2, 60, "both nodes to report")
    jobs = []
    for name, frames in SHOTS:
        request = JobRequest.model_validate(
            {"name": name, "frames": f"1-{frames}", "renderer": {"kind": "noop", "sleep": SECONDS}}
        )
        job = service.submit_job(studio_id, request)
        assert job.id is not None
        jobs.append(job.id)

    def done() -> bool:
        return all(service.get_job(studio_id, j).job.state == "done" for j in jobs)

    wait_for(done, 120, "the workload to render")
    with Session(engine) as session:
        first = session.exec(select(func.min(AttemptRow.started_at))).one()
        last = session.exec(select(func.max(FrameResultRow.finished_at))).one()
        per_node = dict(
            session.exec(
                select(FrameResultRow.node, func.count()).group_by(FrameResultRow.node)
            ).all()
        )
    assert first is not None and last is not None
    rendered = last - first
    assert planned.makespan_seconds == pytest.approx(36 * (SECONDS + settings.tick_seconds) / 4)
    assert rendered == pytest.approx(planned.makespan_seconds, rel=0.10), (rendered, per_node)
    for node, count in planned.frames_by_region.items():
        assert per_node[node] == pytest.approx(count, rel=0.10), (
            per_node,
            planned.frames_by_region,
        )
