"""Two studios of weights 1 and 3 compete for 4 render slots of real nodes: over the
contested period, their measured slot-seconds split 25/75 (within 10% of each)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import AttemptRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, wait_for

pytestmark = pytest.mark.end_to_end

CONTESTED_SECONDS = 16.0
FRAME_SECONDS = 1.0


def slot_seconds(engine: Engine, job_id: int, start: float, end: float) -> float:
    """Render-slot seconds the job's attempts held within [start, end]."""
    with Session(engine) as session:
        attempts = session.exec(
            select(AttemptRow).where(
                AttemptRow.job_id == job_id, col(AttemptRow.started_at).is_not(None)
            )
        ).all()
    held = 0.0
    for attempt in attempts:
        assert attempt.started_at is not None
        finished = attempt.finished_at if attempt.finished_at is not None else end
        held += max(0.0, min(finished, end) - max(attempt.started_at, start))
    return held


def test_weights_one_and_three_share_four_slots(
    processes: Processes, engine: Engine, settings: Settings
) -> None:
    service = StudioService(engine, settings)
    light, _ = service.create_studio("light")
    heavy, _ = service.create_studio("heavy")
    service.set_weight("heavy", 3)
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=2)
    processes.worker("node-2", slots=2)
    wait_for(lambda: len(service.list_nodes()) == 2, 60, "two nodes of two slots")

    jobs = {}
    for studio in (light, heavy):
        assert studio.id is not None
        renderer = {"kind": "noop", "sleep": FRAME_SECONDS}
        request = JobRequest.model_validate(
            {"name": "contest", "frames": "1-200", "renderer": renderer}
        )
        job = service.submit_job(studio.id, request)
        assert job.id is not None
        jobs[studio.name] = (studio.id, job.id)
    # Measure after the first round of chunks has settled, while both have plenty queued.
    start = time.time() + 4.0
    end = start + CONTESTED_SECONDS
    time.sleep(end - time.time())
    for studio_id, job_id in jobs.values():
        assert service.get_job(studio_id, job_id).progress.frames_queued > 0, "not contested"
    light_held = slot_seconds(engine, jobs["light"][1], start, end)
    heavy_held = slot_seconds(engine, jobs["heavy"][1], start, end)
    for studio_id, job_id in jobs.values():
        service.cancel_job(studio_id, job_id)

    share = light_held / (light_held + heavy_held)
    assert light_held + heavy_held > 0.8 * 4 * CONTESTED_SECONDS  # the 4 slots were busy
    assert 0.225 <= share <= 0.275, f"light studio held {share:.1%} of the slot-seconds"
