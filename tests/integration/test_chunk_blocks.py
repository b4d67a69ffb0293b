"""A job's chunks past its first ones wait in blocks that the scheduler cuts as it
dispatches (scheduler/core/chunks.py): a job is a few rows whatever its size, and
everything a studio or the scheduler does with chunks holds for the ones in blocks.

The number of chunks cut at submission is lowered here so that small jobs have blocks."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.core.frames import FrameRange
from scheduler.db import ChunkRow, FrameResultRow, JobRow
from scheduler.db.transitions import Block, cut_block
from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import NotFound
from scheduler.usecases import jobs
from scheduler.usecases.jobs import StudioService
from scheduler.wire.messages import FrameReport
from tests.integration.conftest import event, finished, heartbeat, rows, submit

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _cut_few(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "CHUNKS_CUT_AT_SUBMISSION", 2)


def _render_all(scheduler: Scheduler, ticks: int = 100) -> list[list[int]]:
    """Dispatch and finish everything; the frames of each message sent, in order."""
    sent = []
    for _ in range(ticks):
        messages = scheduler.dispatch_tick()
        if not messages:
            break
        sent.extend(m.frames for m in messages)
        scheduler.ingest([finished(m) for m in messages])
    return sent


def test_a_block_is_cut_as_dispatched_and_every_frame_renders_once(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-23,30-40x5", chunk_size=2)
    stored = sorted(rows(engine, ChunkRow, job_id=job_id), key=lambda c: c.position)
    assert [(str(c.frame_range()), c.position, c.chunks) for c in stored] == [
        ("1-2", 0, 1),
        ("3-4", 1, 1),
        ("5-23", 2, 10),
        ("30-40x5", 12, 2),
    ]
    detail = studios.get_job(studio_id, job_id)
    assert detail.progress.frames_queued == detail.job.frame_count == 26
    assert sum(detail.progress.chunks.values()) == 14

    scheduler.ingest([heartbeat(slots=2)])
    first = scheduler.dispatch_tick()
    assert [m.frames for m in first] == [[1, 2], [3, 4], [5, 6]]  # 2 slots + a buffer of 1
    sent = [m.frames for m in first]
    scheduler.ingest([finished(m) for m in first])
    sent += _render_all(scheduler)

    assert [f for frames in sent for f in frames] == [*range(1, 24), 30, 35, 40]
    assert sent[-2:] == [[30, 35], [40]]
    results = rows(engine, FrameResultRow, job_id=job_id)
    assert Counter(r.frame for r in results) == Counter([*range(1, 24), 30, 35, 40])
    stored = rows(engine, ChunkRow, job_id=job_id)
    assert len(stored) == 14 and {c.chunks for c in stored} == {1}
    assert sorted(c.position for c in stored) == list(range(14))
    detail = studios.get_job(studio_id, job_id)
    assert (detail.job.state, detail.progress.frames_done) == ("done", 26)


def test_frames_in_a_block_are_listed_and_found_by_seeks(
    studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-1000000")
    assert len(rows(engine, ChunkRow, job_id=job_id)) == 3
    page = studios.list_frames(studio_id, job_id, limit=3, after=999_990)
    assert [(f.frame, f.state, f.attempt) for f in page] == [
        (999_991, "queued", 0),
        (999_992, "queued", 0),
        (999_993, "queued", 0),
    ]
    assert [f.frame for f in studios.list_frames(studio_id, job_id, limit=3)] == [1, 2, 3]
    assert [f.frame for f in studios.list_frames(studio_id, job_id, 500_000, 2)] == [
        500_001,
        500_002,
    ]
    assert [f.frame for f in studios.list_frames(studio_id, job_id, 1, 2, after=1)] == [3, 4]
    assert studios.list_frames(studio_id, job_id, limit=5, after=1_000_000) == []
    assert studios.list_frames(studio_id, job_id, limit=5, state="done") == []
    assert studios.frame_status(studio_id, job_id, 777_777).state == "queued"
    with pytest.raises(NotFound):
        studios.frame_status(studio_id, job_id, 1_000_001)
    progress = studios.get_job(studio_id, job_id).progress
    assert (progress.frames_total, progress.frames_queued) == (1_000_000, 1_000_000)


def test_a_listing_by_state_skips_frames_an_earlier_attempt_rendered(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    job_id = submit(studios, studio_id, "1-10", chunk_size=2, max_attempts=1)
    scheduler.ingest([heartbeat(slots=1)])
    first, second = scheduler.dispatch_tick()  # 1-2 and 3-4
    scheduler.ingest([finished(first)])
    frame_3 = FrameReport(3, None, render_seconds=1.0, cpu_seconds=1.0)
    scheduler.ingest(
        [event("frame", second, result=frame_3), event("failed", second, error="boom")]
    )
    listed = studios.list_frames(studio_id, job_id, state="failed")
    assert [f.frame for f in listed] == [4]
    done = studios.list_frames(studio_id, job_id, state="done")
    assert [f.frame for f in done] == [1, 2, 3]
    queued = studios.list_frames(studio_id, job_id, state="queued", after=6)
    assert [f.frame for f in queued] == [7, 8, 9, 10]


def test_the_farm_ends_a_block_with_its_job_and_a_retry_queues_it_again(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-50", max_attempts=1, max_failed_frames=1)
    scheduler.ingest([heartbeat(slots=1)])
    first, second = scheduler.dispatch_tick()
    scheduler.ingest([finished(first), event("failed", second, error="boom")])
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "failed"
    assert (detail.progress.frames_done, detail.progress.frames_failed) == (1, 1)
    assert detail.progress.frames_cancelled == 48  # the block among them
    studios.retry_job(studio_id, job_id)
    assert studios.get_job(studio_id, job_id).progress.frames_queued == 49
    sent = _render_all(scheduler)
    assert sorted(f for frames in sent for f in frames) == list(range(2, 51))
    assert studios.get_job(studio_id, job_id).job.state == "done"


def test_a_cancel_wins_over_a_stale_cut(
    studios: StudioService, studio_id: int, engine: Engine
) -> None:
    """The scheduler read a block, a studio cancelled the job, then the scheduler cuts:
    nothing is cut, and no queued chunk appears in the cancelled job."""
    job_id = submit(studios, studio_id, "1-20")
    (read,) = [c for c in rows(engine, ChunkRow, job_id=job_id) if c.chunks > 1]
    studios.cancel_job(studio_id, job_id)
    with Session(engine) as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        block = Block(read.id, read.position, read.frame_range(), read.chunks)
        assert cut_block(session, job, block, 3) == []
        session.commit()
    assert {c.state for c in rows(engine, ChunkRow, job_id=job_id)} == {"cancelled"}
    assert len(rows(engine, ChunkRow, job_id=job_id)) == 3


def test_a_frame_dependent_job_cuts_only_what_may_go(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    upstream = submit(studios, studio_id, "1-10")
    downstream = submit(
        studios, studio_id, "1-10", priority=90, depends_on=[upstream], dependency="frame"
    )
    scheduler.ingest([heartbeat(slots=3)])
    sent = scheduler.dispatch_tick()
    assert {m.job_id for m in sent} == {upstream}  # nothing of downstream is ready
    scheduler.ingest([finished(m) for m in sent])
    ready = [f for m in sent for f in m.frames]
    later = scheduler.dispatch_tick()
    # Downstream (priority 90) goes first, and only its frames upstream has rendered;
    # what room is left (the pool's buffer) is upstream's.
    cut = [m.frames for m in later if m.job_id == downstream]
    assert cut == [[frame] for frame in ready]
    assert {m.job_id for m in later[: len(ready)]} == {downstream}
    assert FrameRange(1, 10).within(3, 4) == range(3, 5)
