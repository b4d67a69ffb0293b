"""How far a running frame is, in the API's frame listing: Blender renders a real chunk
on a node (run here, in a thread) that posts its sample counts to Redis, while the
scheduler ingests the node's events and a studio lists the job's frames.

Scenes and the Blender to render with come from tests/integration/test_blender.py.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.app import create_app
from scheduler.dispatch.scheduler import Scheduler
from scheduler.launch import studio
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.progress import PROGRESS_KEY, FrameProgress, ProgressBoard
from tests.conftest import free_port, wait_for
from tests.integration.conftest import event, heartbeat
from tests.integration.test_blender import build_scene, require_blender
from workers.renderers import BLENDER
from workers.runner import run_chunk

pytestmark = pytest.mark.integration

SCENE = "shots/sq010/sh020.blend"
# Enough pixels and samples that a frame renders for seconds, even on many cores
# (Cycles' adaptive sampling stops the scene's frames after some 700 of 4,096 samples).
SLOW = {"samples": 4096, "resolution_x": 400, "resolution_y": 225}


def submit(
    studios: StudioService, frames: str, renderer: dict[str, Any]
) -> tuple[int, dict[str, str]]:
    """A job of a new studio, all its frames in one chunk; its id and the studio's key."""
    studio, key = studios.create_studio("east")
    assert studio.id is not None
    request = JobRequest.model_validate(
        {"name": "shot", "frames": frames, "pool": "cpu", "chunk_size": 100, "renderer": renderer}
    )
    job = studios.submit_job(studio.id, request)
    assert job.id is not None
    return job.id, {"Authorization": f"Bearer {key}"}


def test_a_rendering_frame_shows_how_far_it_is_until_it_is_done(
    scheduler: Scheduler,
    studios: StudioService,
    settings: Settings,
    client: TestClient,
    broker: redis.Redis,
) -> None:
    blender = require_blender()
    BLENDER.use(blender)
    build_scene(blender, settings.storage_root / SCENE)
    job_id, key = submit(studios, "1-2", {"kind": "blender", "scene": SCENE, **SLOW})
    scheduler.ingest([heartbeat("node-a", slots=1)])
    (message,) = scheduler.dispatch_tick()

    events: queue.Queue[dict[str, Any]] = queue.Queue()
    board = ProgressBoard(settings.effective_broker_url)
    outcome: list[bool] = []
    node = threading.Thread(
        target=lambda: outcome.append(
            run_chunk(message, settings.storage_root, "node-a", events.put, progress=board)
        ),
        daemon=True,
    )
    node.start()

    def listing() -> list[dict[str, Any]]:
        """The frames as the studio sees them, after the scheduler took the node's news."""
        while not events.empty():
            scheduler.ingest([events.get()])
        response = client.get(f"/v1/jobs/{job_id}/frames", headers=key)
        assert response.status_code == 200, response.text
        frames: list[dict[str, Any]] = response.json()
        return frames

    def a_frame_part_rendered() -> dict[str, Any]:
        rendering = node.is_alive()
        found = [f for f in listing() if f["state"] == "running" and f["progress"] is not None]
        if not found and not rendering:
            pytest.fail(f"the chunk ended ({outcome}) and no frame showed its progress")
        return found[0] if found else {}

    seen = wait_for(a_frame_part_rendered, 300, "a running frame with its progress")
    assert 0.0 < seen["progress"] < 1.0, seen
    assert seen["node"] == "node-a" and seen["attempt"] == message.attempt

    node.join(timeout=600)
    assert outcome == [True]

    def all_done() -> list[dict[str, Any]]:
        frames = listing()
        return frames if all(frame["state"] == "done" for frame in frames) else []

    frames = wait_for(all_done, 60, "the frames to be done")
    assert [frame["progress"] for frame in frames] == [None, None]
    assert broker.hgetall(PROGRESS_KEY.format(job_id=job_id)) == {}  # the node cleared its counts
    board.close()


def test_the_listing_answers_without_counts_and_without_redis(
    scheduler: Scheduler,
    studios: StudioService,
    settings: Settings,
    engine: Engine,
    client: TestClient,
    broker: redis.Redis,
) -> None:
    job_id, key = submit(studios, "1-3", {"kind": "noop"})
    scheduler.ingest([heartbeat("node-a", slots=1)])
    (message,) = scheduler.dispatch_tick()
    scheduler.ingest([event("started", message)])

    def progress(api: TestClient) -> list[Any]:
        response = api.get(f"/v1/jobs/{job_id}/frames", headers=key)
        assert response.status_code == 200, response.text
        assert [f["state"] for f in response.json()] == ["running"] * 3
        return [f["progress"] for f in response.json()]

    assert progress(client) == [None, None, None]  # nothing counted yet

    board = ProgressBoard(settings.effective_broker_url)
    stale = FrameProgress(2, 50, 100, "node-b", message.attempt - 1, 0.0)  # an older attempt
    board.post(
        job_id, message.attempt, [FrameProgress(1, 25, 100, "node-a", message.attempt, 0.0)], []
    )
    board.post(job_id, message.attempt - 1, [stale], [])
    broker.hset(PROGRESS_KEY.format(job_id=job_id), "3", "not a count")
    assert progress(client) == [0.25, None, None]
    running = client.get(f"/v1/jobs/{job_id}/frames?state=running&offset=1", headers=key).json()
    assert [(f["frame"], f["progress"]) for f in running] == [(2, None), (3, None)]
    board.close()

    def through_the_api(request: httpx.Request) -> httpx.Response:
        return client.request(request.method, request.url.raw_path.decode(), headers=key)

    api = studio.Api(
        studio.Profile("http://farm", "rf_unused"), httpx.MockTransport(through_the_api)
    )
    assert studio.running_frames(api, job_id) == [(1, 0.25), (2, None), (3, None)]  # as watched

    away = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(away, engine)) as without_redis:
        assert progress(without_redis) == [None, None, None]
