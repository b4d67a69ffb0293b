"""Many studios at once against a real API process: no request fails for want of a lock.

On SQLite (the default) every writer takes the database's one write lock; readers,
/metrics among them, must never take it, and a writer's wait for it is retried, not
answered with a 500.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import psutil
import pytest
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from api.metrics import FarmCollector
from scheduler.db import JobRow
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.submissions import JobRequest
from tests.conftest import Processes, free_port, wait_for

pytestmark = pytest.mark.integration

SUBMITTERS = 60
JOB = {"name": "shot", "frames": "1-24", "pool": "cpu", "renderer": {"kind": "noop"}}


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_submitters_and_scrapers_get_no_errors(
    engine: Engine, studio: tuple[StudioService, int], processes: Processes, workers: int
) -> None:
    """With two API processes (``--workers 2``), they also contend with each other."""
    service, _studio_id = studio
    key = service.create_key("test-studio")
    port = free_port()
    where = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    api = processes.start("api", "api", *where)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), 60, "the API to answer")
    if workers > 1:  # uvicorn's workers (beside multiprocessing's resource tracker)
        children = psutil.Process(api.pid).children(recursive=True)
        serving = [p for p in children if "spawn_main" in " ".join(p.cmdline())]
        assert len(serving) == workers

    statuses: Counter[str] = Counter()
    counted = threading.Lock()
    start = threading.Barrier(SUBMITTERS + 2)
    submitted = threading.Event()

    def record(call: httpx.Response | Exception) -> None:
        status = str(call.status_code) if isinstance(call, httpx.Response) else repr(call)
        with counted:
            statuses[status] += 1

    def submit(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            start.wait()
            try:
                record(
                    client.post(
                        "/v1/jobs",
                        json={"name": f"rush {n}", "frames": "1-20", "renderer": {"kind": "noop"}},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                )
            except httpx.HTTPError as error:
                record(error)

    def scrape() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            start.wait()
            while not submitted.is_set():
                try:
                    record(client.get("/metrics"))
                except httpx.HTTPError as error:
                    record(error)

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    submitters = [threading.Thread(target=submit, args=(n,)) for n in range(SUBMITTERS)]
    for thread in [*scrapers, *submitters]:
        thread.start()
    for thread in submitters:
        thread.join()
    submitted.set()
    for thread in scrapers:
        thread.join()

    errors = {status: n for status, n in statuses.items() if status not in ("200", "201")}
    assert errors == {}, (errors, processes.log("api")[-3000:])
    assert statuses["201"] == SUBMITTERS
    with Session(engine) as session:
        names = session.exec(
            select(JobRow.name, func.count())
            .where(col(JobRow.name).startswith("rush "))
            .group_by(col(JobRow.name))
        ).all()
    assert sorted(n for _name, n in names) == [1] * SUBMITTERS  # every job once, none twice


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_reads_answer_while_a_writer_holds_the_lock(
    engine: Engine, studio: tuple[StudioService, int]
) -> None:
    """A studio's reads and /metrics never wait for the write lock: while another
    connection holds it (SQLite: BEGIN IMMEDIATE; PostgreSQL: a lock on the job's row),
    a job, its frames and the farm totals are still read, from the last commit."""
    service, studio_id = studio
    job = service.submit_job(studio_id, JobRequest.model_validate(JOB))
    assert job.id is not None
    answered: list[object] = []

    def read() -> None:
        answered.append(service.get_job(studio_id, job.id).progress.frames_queued)
        answered.append(len(service.list_frames(studio_id, job.id, limit=10)))
        answered.append(len(list(FarmCollector(engine, max_age=0).collect())))

    with engine.connect() as writer:  # the engine's writers begin BEGIN IMMEDIATE on SQLite
        writer.execute(  # an uncommitted change the readers must not wait for, nor see
            update(JobRow).where(col(JobRow.id) == job.id).values(priority=99)
        )
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=30)  # the write lock's own wait is 60 s: a reader that took it
        finished_under_the_lock = not reader.is_alive()  # would still be waiting here
        writer.rollback()
    reader.join(timeout=90)
    assert finished_under_the_lock, "a read waited for the writer's lock"
    assert answered[:2] == [24, 10] and answered[2]
    assert service.get_job(studio_id, job.id).job.priority == 50
