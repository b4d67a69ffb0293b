"""PostgreSQL restarted under a running farm: a cluster of the test's own (initdb and
pg_ctl on a temporary folder, tests/hosts.py), stopped mid-job for seconds and started
again. The API says it is not ready meanwhile and answers again after, without a
restart of its own; the scheduler waits the outage out; the nodes' events wait in Redis
until they are committed. Every frame rendered exactly once; each process holds no more
connections than its pool allows."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from tests.conftest import Processes, free_port, wait_for
from tests.end_to_end.test_faults import assert_rendered_once, frames_done, submit, wait_done
from tests.hosts import PostgresCluster, postgres_bin

pytestmark = pytest.mark.end_to_end

POOL, OVERFLOW = 3, 2  # small, so that a leak past the bound would show


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    if postgres_bin("initdb") is None or postgres_bin("pg_ctl") is None:
        if os.environ.get("RENDERFARM_TEST_DATABASE_URL"):  # CI: PostgreSQL is installed
            pytest.fail("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        pytest.skip("no PostgreSQL server programs to run a cluster of the test's")
    cluster = PostgresCluster.temporary(free_port())
    cluster.create().start()
    cluster.create_database("farm")
    yield cluster
    cluster.remove()


@pytest.fixture
def database_url(cluster: PostgresCluster) -> str:
    return cluster.url("farm", over="tcp")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"db_pool_size": POOL, "db_max_overflow": OVERFLOW})


def ready(api: str) -> int:
    try:
        return httpx.get(f"{api}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_the_farm_rides_out_a_postgresql_restart_and_loses_nothing(
    cluster: PostgresCluster,
    processes: Processes,
    studio: tuple[StudioService, int],
    engine: Engine,
    settings: Settings,
) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    processes.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    processes.start("scheduler", "scheduler")
    processes.worker("node-1", slots=2)
    wait_for(lambda: ready(api) == 200, 60, "the API to be ready")
    wait_for(lambda: studio[0].list_nodes(), 60, "the node")
    most: Counter[str] = Counter()  # the most connections each process held at once
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.1):
            with contextlib.suppress(subprocess.CalledProcessError):  # while it is down
                now = Counter(name for name, _state in cluster.connections("farm"))
                most.update({p: n - most[p] for p, n in now.items() if n > most[p]})

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(20):  # load: the API's reads, the scheduler's ticks, at once
        threading.Thread(target=ready, args=(api,), daemon=True).start()
    job_id = submit(studio, "1-24", width=480)
    wait_for(lambda: frames_done(studio, job_id) >= 3, 120, "a few frames")

    cluster.stop("fast")  # every connection of every process ends
    wait_for(lambda: ready(api) == 503, 30, "the API to say it is not ready")
    time.sleep(3.0)  # the node renders on; its events wait in Redis
    cluster.start()
    wait_for(lambda: ready(api) == 200, 60, "the API to be ready again")
    key = studio[0].create_studio("after")[1]
    answer = httpx.get(f"{api}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert answer.status_code == 200  # its pool replaced the connections the restart ended

    wait_done(studio, job_id)
    watching.set()
    watcher.join(10)
    assert_rendered_once(engine, job_id, 24)
    for process in ("renderfarm-api", "renderfarm-scheduler"):
        assert 0 < most[process] <= POOL + OVERFLOW, most
    assert all(child.poll() is None for child in processes.started.values())  # none died
    assert "database unavailable" in processes.log("scheduler")  # it waited the outage out
