"""The per-pool demand an autoscaler reads (api/metrics.py, scheduler/core/demand.py):
slots the pool could fill now, slots its deadlines need, frames waiting; from the
database, whatever the nodes' Celery queues hold (the dispatch keeps them short)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Engine

from api.metrics import FarmCollector
from scheduler.dispatch.scheduler import Scheduler
from scheduler.usecases.jobs import StudioService
from scheduler.wire.messages import HeartbeatEvent, NodeReport
from tests.integration.conftest import Clock, event, finished, heartbeat, submit


def demand(engine: Engine, clock: Clock) -> dict[str, dict[str, float]]:
    """renderfarm_pool_* by name and pool, as a scrape reads them."""
    found: dict[str, dict[str, float]] = {}
    for family in FarmCollector(engine, max_age=0, wall=clock).collect():
        if family.name.startswith("renderfarm_pool_"):
            for sample in family.samples:
                found.setdefault(sample.name, {})[sample.labels["pool"]] = sample.value
    return found


def test_slots_wanted_count_what_could_render_now_and_not_what_waits(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    assert demand(engine, clock) == {}  # no pool has work: no series to scale on
    job_id = submit(studios, studio_id, "1-6")
    submit(studios, studio_id, "1-4", pool="gpu")
    scheduler.ingest([heartbeat("node-a", slots=2)])
    sent = scheduler.dispatch_tick()
    scheduler.ingest([event("started", sent[0], "node-a")])
    figures = demand(engine, clock)
    assert figures["renderfarm_pool_slots_wanted"] == {"cpu": 6, "gpu": 4}
    assert figures["renderfarm_pool_frames_waiting"] == {"cpu": 5, "gpu": 4}  # one renders
    assert figures["renderfarm_pool_deadline_slots"] == {"cpu": 0, "gpu": 0}

    scheduler.ingest([finished(sent[0], "node-a")])
    studios.suspend_job(studio_id, job_id)  # its queued chunks stop wanting slots
    figures = demand(engine, clock)
    assert figures["renderfarm_pool_slots_wanted"]["cpu"] == len(sent) - 1  # sent: they render
    assert figures["renderfarm_pool_frames_waiting"]["cpu"] == 5  # waiting, all the same


def test_deadline_slots_follow_each_jobs_measured_pace(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    deadline = dt.datetime.fromtimestamp(clock.now + 100, dt.UTC).isoformat()
    submit(studios, studio_id, "1-10", deadline=deadline)
    figures = demand(engine, clock)
    assert figures["renderfarm_pool_deadline_slots"] == {"cpu": 10}  # pace unknown: all

    scheduler.ingest([heartbeat("node-a", slots=2)])
    first = scheduler.dispatch_tick()[:2]
    scheduler.ingest([finished(message, "node-a") for message in first])  # 1.5 s a frame
    figures = demand(engine, clock)
    assert figures["renderfarm_pool_deadline_slots"] == {"cpu": 1}  # 8 x 1.5 s in 100 s

    clock.now += 95  # 8 x 1.5 s in 5 s: 3 slots
    assert demand(engine, clock)["renderfarm_pool_deadline_slots"] == {"cpu": 3}
    clock.now += 10  # late: every chunk it has left
    assert demand(engine, clock)["renderfarm_pool_deadline_slots"] == {"cpu": 8}


def gpu_node() -> dict[str, Any]:
    info = NodeReport("gpu-a", "gpu", "host", 2, 0, cores=8, memory_bytes=2**34, gpus=1)
    return HeartbeatEvent(node="gpu-a", info=info).to_dict()


def test_a_pool_of_no_nodes_wants_slots_once_what_its_jobs_wait_for_is_done(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    """Scaled to none, a pool has no dispatch to note that its jobs stopped waiting:
    its demand is read from the jobs' states, so it scales up again."""
    first = submit(studios, studio_id, "1-2", pool="gpu")
    submit(studios, studio_id, "1-3", depends_on=[first])  # cpu: waits for the gpu job
    scheduler.ingest([heartbeat("node-cpu", slots=2), gpu_node()])
    scheduler.dispatch_tick()  # the cpu job is held: "waiting for job(s) ..."
    assert demand(engine, clock)["renderfarm_pool_slots_wanted"]["cpu"] == 0
    clock.now += 120  # node-cpu is gone (the pool scaled to none)
    scheduler.reconcile()
    scheduler.ingest([gpu_node()])
    for message in scheduler.dispatch_tick():
        scheduler.ingest([finished(message, "gpu-a")])
    assert studios.get_job(studio_id, first).job.state == "done"
    assert demand(engine, clock)["renderfarm_pool_slots_wanted"]["cpu"] == 3


def test_suspended_jobs_need_no_slots_for_their_deadlines(
    studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    deadline = dt.datetime.fromtimestamp(clock.now + 3600, dt.UTC).isoformat()
    job_id = submit(studios, studio_id, "1-50", deadline=deadline)
    assert demand(engine, clock)["renderfarm_pool_deadline_slots"] == {"cpu": 50}
    studios.suspend_job(studio_id, job_id)
    figures = demand(engine, clock)
    assert figures["renderfarm_pool_deadline_slots"] == {"cpu": 0}
    assert figures["renderfarm_pool_slots_wanted"] == {"cpu": 0}
