"""Real render nodes (``renderfarm worker`` processes) and the scheduler loop on real Redis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import AttemptRow, FrameResultRow
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from scheduler.wire.messages import ChunkMessage, FailedEvent, FinishedEvent, decode_event
from tests.conftest import Processes, renderers_running, wait_for
from workers.runner import run_chunk

pytestmark = pytest.mark.integration


def test_two_nodes_render_a_job(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
    engine: Engine,
) -> None:
    service, studio_id = studio
    processes.worker("node-1", slots=1)
    processes.worker("node-2", slots=1)
    wait_for(lambda: len(service.list_nodes()) == 2, 60, "both nodes to report")
    job = service.submit_job(
        studio_id,
        JobRequest.model_validate(
            {
                "name": "turntable",
                "frames": "1-8",
                "chunk_size": 2,
                "renderer": {"kind": "builtin", "width": 48, "height": 32},
            }
        ),
    )
    assert job.id is not None
    done = wait_for(
        lambda: (d := service.get_job(studio_id, job.id)).job.state in ("done", "failed") and d,  # type: ignore[arg-type]
        120,
        "the job to finish",
    )
    assert done.job.state == "done", [processes.log("node-1"), processes.log("node-2")]
    assert done.progress.frames_done == 8
    frames = sorted((settings.storage_root / "jobs" / str(job.id) / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"frame_{n:06d}.png" for n in range(1, 9)]
    assert all(Image.open(f).size == (48, 32) for f in frames)
    with Session(engine) as session:
        results = session.exec(select(FrameResultRow)).all()
        attempts = session.exec(select(AttemptRow)).all()
    assert len(results) == 8 and all(r.render_seconds > 0 and r.cpu_seconds > 0 for r in results)
    # each frame's size, as written: what its trip back to a far studio moves
    sizes = {f.name: f.stat().st_size for f in frames}
    assert all(r.output_bytes == sizes[Path(r.output or "").name] > 0 for r in results)
    # Metered by the power model (no RAPL on these machines) and billed in guizhou.
    for r in results:
        assert r.energy_method == "model" and r.region == "guizhou" and r.studio_id == studio_id
        assert r.it_joules and r.it_joules > 0
        assert r.facility_joules == pytest.approx(r.it_joules * 1.2)
        assert r.co2_grams == pytest.approx(r.facility_joules / 3.6e6 * 536.6)
    assert all(a.energy_joules and a.energy_joules > 0 for a in attempts)
    assert sum(a.energy_joules or 0 for a in attempts) == pytest.approx(
        sum(r.it_joules or 0 for r in results)
    )
    assert {a.state for a in attempts} == {"done"} and len(attempts) == 4
    assert {n.state for n in service.list_nodes()} == {"online"}


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"timeout": 1.0}, "time limit of 1 s per frame"),  # 4 frames: 4 s for the chunk
        ({"timeout": 600.0, "stall_timeout": 1.5}, "stalled: no output for 1.5 s"),
    ],
)
def test_a_render_past_its_limits_is_killed_with_its_renderer(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
    limits: dict[str, float],
    reason: str,
) -> None:
    """A first frame of seconds, silent until written: too slow for a 1 s-per-frame
    limit over 4 frames, and too quiet for a 1.5 s stall limit."""
    service, studio_id = studio
    processes.worker("node-1", slots=1)
    wait_for(lambda: service.list_nodes(), 60, "the node to report")
    job = service.submit_job(
        studio_id,
        JobRequest.model_validate(
            {
                "name": "too slow",
                "frames": "1-4",
                "chunk_size": 4,
                "renderer": {"kind": "builtin", "width": 1920, "height": 1080, "samples": 4},
                "max_attempts": 1,
                **limits,
            }
        ),
    )
    assert job.id is not None
    wait_for(lambda: renderers_running(job.id), 30, "the renderer to start")
    failed = wait_for(
        lambda: (d := service.get_job(studio_id, job.id)).job.state == "failed" and d,  # type: ignore[arg-type]
        60,
        "the job to fail",
    )
    assert failed.progress.frames_failed == 4
    assert renderers_running(job.id) == []
    logs = (settings.storage_root / f"jobs/{job.id}/logs").glob("*.log")
    assert any(reason in path.read_text() for path in logs)


def test_runner_reports_frames_and_failures(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    message = ChunkMessage(
        chunk_id=1,
        attempt=1,
        job_id=1,
        pool="cpu",
        frames=[3, 4],
        renderer="builtin",
        settings={"width": 32, "height": 24},
        output_pattern="f_{frame}.png",
        log_path="a.log",
        timeout=60,
    )
    assert run_chunk(message, tmp_path, "node", events.append)
    assert [e["kind"] for e in events] == ["started", "frame", "frame", "finished"]
    last = decode_event(events[-1])  # as the scheduler reads it
    assert isinstance(last, FinishedEvent) and [r.frame for r in last.results] == [3, 4]
    assert (tmp_path / "f_000003.png").is_file() and (tmp_path / "f_000004.png").is_file()

    events.clear()
    unknown = dataclasses.replace(message, renderer="maya")
    assert not run_chunk(unknown, tmp_path, "node", events.append)
    failed = decode_event(events[-1])
    assert isinstance(failed, FailedEvent) and "no renderer 'maya'" in failed.error


def test_a_cancel_kills_the_renderer_at_once_not_when_its_frame_is_done(
    scheduler_loop: None,
    processes: Processes,
    studio: tuple[StudioService, int],
    settings: Settings,
) -> None:
    """Celery's revoke with terminate reaches the pool process running the attempt;
    its renderer (a frame of many seconds) dies with it, and writes no frame."""
    service, studio_id = studio
    processes.worker("node-1", slots=1)
    wait_for(lambda: service.list_nodes(), 60, "the node to report")
    slow = {"kind": "builtin", "width": 1920, "height": 1080, "samples": 16}  # ~10 s a frame
    job = service.submit_job(
        studio_id, JobRequest.model_validate({"name": "cancelled", "frames": "1", "renderer": slow})
    )
    assert job.id is not None
    wait_for(lambda: renderers_running(job.id), 30, "the renderer to start")
    service.cancel_job(studio_id, job.id)
    wait_for(lambda: not renderers_running(job.id), 5, "the renderer to be killed")
    assert not (settings.storage_root / f"jobs/{job.id}/frames/frame_000001.png").exists()
