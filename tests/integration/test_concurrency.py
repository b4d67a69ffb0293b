"""Many studios at once against a real API process: no request fails for want of a lock.

On SQLite (the default) every writer takes the database's one write lock; readers,
/metrics among them, must never take it, and a writer's wait for it is retried, not
answered with a 500.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from scheduler.db import JobRow
from scheduler.usecases.jobs import StudioService
from tests.conftest import Processes, free_port, wait_for

pytestmark = pytest.mark.integration

SUBMITTERS = 60


def test_concurrent_submitters_and_scrapers_get_no_errors(
    engine: Engine, studio: tuple[StudioService, int], processes: Processes
) -> None:
    service, _studio_id = studio
    key = service.create_key("test-studio")
    port = free_port()
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), 60, "the API to answer")

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
