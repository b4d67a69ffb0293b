"""Celery's own tools on a running farm: ``celery -A scheduler.wire.celery_app inspect
active`` and ``celery events`` (what Flower hears) say, in words, which chunk a real
render node renders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import ChunkRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, farm_env, wait_for

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]


def celery(settings: Settings, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``celery -A scheduler.wire.celery_app ...`` as an operator runs it: the farm's
    broker in ``RENDERFARM_BROKER_URL``, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENDERFARM_")}
    env["RENDERFARM_BROKER_URL"] = farm_env(settings)["RENDERFARM_BROKER_URL"]
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "scheduler.wire.celery_app", *args],
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_celery_tools_show_what_a_node_renders(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
) -> None:
    service, studio_id = studio
    worker = f"node-1@{socket.gethostname()}"
    processes.start(
        "node-1", "worker", "--pool", "cpu", "--slots", "1", "--name", "node-1", "--events"
    )
    wait_for(lambda: service.list_nodes(), 60, "the node to report")
    # Task events as Flower receives them, dumped by Celery's own monitor.
    with open(tmp_path / "events.txt", "w") as dump:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "scheduler.wire.celery_app", "events", "--dump"],
            env={**os.environ, "RENDERFARM_BROKER_URL": settings.effective_broker_url},
            cwd=REPOSITORY,
            stdout=dump,
            stderr=subprocess.STDOUT,
        )

    def dumped() -> str:
        return (tmp_path / "events.txt").read_text(errors="replace")

    try:
        wait_for(lambda: f"{worker} [" in dumped(), 30, "celery events to hear the node")
        # Four frames of 3 s each: a chunk that renders long enough to be looked at.
        request = {"name": "slow", "frames": "1-4", "chunk_size": 4, "pool": "cpu"}
        renderer = {"kind": "noop", "sleep": 3.0}
        job = service.submit_job(
            studio_id, JobRequest.model_validate({**request, "renderer": renderer})
        )
        with Session(engine) as session:
            (chunk,) = session.exec(select(ChunkRow).where(ChunkRow.job_id == job.id)).all()
        described = f"job {job.id} chunk {chunk.id} frames 1-4 attempt 1"

        def active() -> list[dict[str, Any]]:
            answer = celery(settings, "inspect", "active", "--json", "--destination", worker)
            return list(json.loads(answer.stdout or "{}").get(worker, []))

        (task,) = wait_for(active, 30, "inspect active to list the chunk")
        assert task["name"] == "renderfarm.render_chunk"
        assert task["id"] == f"chunk-{chunk.id}-attempt-1"
        assert task["args"] == described
        queues = celery(settings, "inspect", "active_queues", "--json", "--destination", worker)
        listened = {queue["name"] for queue in json.loads(queues.stdout)[worker]}
        assert "node.node-1" in listened
        wait_for(lambda: "task started" in dumped(), 30, "celery events to see the chunk start")
        assert f"args={described}" in dumped()  # in "task received", which Flower shows
    finally:
        monitor.terminate()
        monitor.wait(10)
