"""The scheduler's use cases against a real database; the broker is a recording fake
where only the scheduler's decisions matter, and real Redis where the broker's own
behaviour (losing its queues) is the point. Fakes and fixtures: tests/integration/conftest.py."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import redis
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow, NodeRow
from scheduler.dispatch.dispatching import NodeRoster
from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import NotFound
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.operators import OperatorService
from scheduler.usecases.templates import TemplateRequest
from scheduler.wire.broker import CeleryBroker
from scheduler.wire.celery_app import make_celery
from scheduler.wire.events import EventConsumer, EventPublisher
from scheduler.wire.messages import FrameReport
from tests.integration.conftest import (
    Clock,
    RecordingBroker,
    count,
    event,
    finished,
    heartbeat,
    rows,
    submit,
)

pytestmark = pytest.mark.integration


def test_nothing_is_dispatched_without_live_nodes(
    scheduler: Scheduler, studios: StudioService, studio_id: int, clock: Clock
) -> None:
    submit(studios, studio_id)
    assert scheduler.dispatch_tick() == []
    scheduler.ingest([heartbeat(slots=2)])
    assert len(scheduler.dispatch_tick()) == 3  # 2 slots + a buffer of 1
    clock.now += 60  # the node falls silent: no new work goes to its pool
    assert scheduler.dispatch_tick() == []


def test_just_in_time_dispatch_follows_free_slots(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-20")
    scheduler.ingest([heartbeat(slots=2)])
    first = scheduler.dispatch_tick()
    assert [m.frames for m in first] == [[1], [2], [3]]
    assert scheduler.dispatch_tick() == []  # the queue is as deep as it should be

    scheduler.ingest([event("started", first[0]), finished(first[0])])
    second = scheduler.dispatch_tick()
    assert [m.frames for m in second] == [[4]]
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "running"
    assert detail.progress.frames_done == 1
    assert detail.progress.frames_running == 0
    assert detail.progress.frames_queued == 19


def test_priority_and_suspend_take_effect_on_the_next_tick(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    old = submit(studios, studio_id, "1-10")
    urgent = submit(studios, studio_id, "1-10", priority=90)
    scheduler.ingest([heartbeat(slots=1)])
    sent = scheduler.dispatch_tick()
    assert {m.job_id for m in sent} == {urgent}
    for message in sent:
        scheduler.ingest([finished(message)])
    studios.suspend_job(studio_id, urgent)
    assert {m.job_id for m in scheduler.dispatch_tick()} == {old}


def test_duplicate_and_superseded_events_change_nothing(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-2")
    scheduler.ingest([heartbeat(slots=1)])
    message = scheduler.dispatch_tick()[0]
    scheduler.ingest([event("started", message), finished(message)])
    outcome = scheduler.ingest([finished(message), event("started", message)])
    assert (outcome.applied, outcome.ignored) == (0, 2)
    assert count(engine, FrameResultRow) == 1
    late = event("failed", message, error="boom")  # a late failure of a done attempt
    scheduler.ingest([late])
    (chunk,) = rows(engine, ChunkRow, id=message.chunk_id)
    assert chunk.state == "done"
    assert studios.get_job(studio_id, job_id).progress.frames_done == 1


def test_failures_retry_after_a_pause_up_to_max_attempts_then_fail_the_job(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    job_id = submit(studios, studio_id, "1", max_attempts=2)
    scheduler.ingest([heartbeat(slots=1)])
    first = scheduler.dispatch_tick()[0]
    scheduler.ingest(
        [event("started", first), event("failed", first, error="segfault", exit_code=139)]
    )
    assert scheduler.dispatch_tick() == []  # the retry waits 5 s
    [waiting] = studios.list_frames(studio_id, job_id)
    assert (waiting.state, waiting.error) == ("queued", "segfault")  # the studio sees why
    clock.now += 5.0
    scheduler.ingest([heartbeat(slots=1)])
    second = scheduler.dispatch_tick()[0]
    assert (second.chunk_id, second.attempt) == (first.chunk_id, 2)
    scheduler.ingest([event("failed", second, error="segfault again", exit_code=139)])
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "failed"
    assert "failed every attempt" in (detail.job.message or "")
    assert [a.state for a in rows(engine, AttemptRow)] == ["failed", "failed"]
    assert studios.frame_status(studio_id, job_id, 1).error == "segfault again"

    studios.retry_job(studio_id, job_id)
    assert studios.frame_status(studio_id, job_id, 1).error is None  # a fresh start
    third = scheduler.dispatch_tick()[0]
    assert third.attempt == 3
    scheduler.ingest([finished(third)])
    assert studios.get_job(studio_id, job_id).job.state == "done"


def test_only_failures_use_up_the_attempts_not_sending_again(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    clock: Clock,
    settings: Settings,
) -> None:
    job_id = submit(studios, studio_id, "1", max_attempts=2)
    scheduler.ingest([heartbeat("node-a", slots=1)])
    scheduler.dispatch_tick()  # never claimed: the broker lost it (the queue is empty)
    clock.now += settings.redispatch_after + 1
    scheduler.ingest([heartbeat("node-a", slots=1)])
    scheduler.reconcile()
    on_lost_node = scheduler.dispatch_tick()[0]
    scheduler.ingest([event("started", on_lost_node, "node-a")])
    clock.now += settings.node_timeout + 1  # node-a goes silent mid-render
    scheduler.ingest([heartbeat("node-b", slots=1)])
    scheduler.reconcile()
    first_failure = scheduler.dispatch_tick()[0]
    assert first_failure.attempt == 3
    scheduler.ingest([event("failed", first_failure, "node-b", error="segfault")])
    assert studios.get_job(studio_id, job_id).job.state != "failed"  # one failure of two
    clock.now += 60.0
    scheduler.ingest([heartbeat("node-b", slots=1)])
    retry = scheduler.dispatch_tick()[0]
    assert retry.attempt == 4
    scheduler.ingest([event("failed", retry, "node-b", error="segfault again")])
    assert studios.get_job(studio_id, job_id).job.state == "failed"
    states = [a.state for a in sorted(rows(engine, AttemptRow), key=lambda a: a.number)]
    assert states == ["superseded", "superseded", "failed", "failed"]


def test_a_jobs_one_statement_read_agrees_with_the_listing(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    # get_job reads a job in one statement (load_job), list_jobs in three (load_progress).
    first = submit(studios, studio_id, "1-2")
    second = submit(studios, studio_id, "1-3")
    scheduler.ingest([heartbeat(slots=4)])
    scheduler.ingest([finished(m) for m in scheduler.dispatch_tick()])
    job_id = submit(  # 1,500 chunks: the last 500 stay a block row until dispatched
        studios, studio_id, "1-3000", chunk_size=2, max_attempts=1, depends_on=[first, second]
    )
    scheduler.ingest([heartbeat(slots=4)])
    sent = [m for m in scheduler.dispatch_tick() if m.job_id == job_id]
    done, failed, running = sent[0], sent[1], sent[2]  # sent[3] stays dispatched
    one_frame = FrameReport(failed.frames[0], None, render_seconds=2.0, cpu_seconds=1.0)
    scheduler.ingest(
        [
            finished(done),
            event("started", running),
            event("frame", failed, result=one_frame),
            event("failed", failed, error="boom"),
        ]
    )
    [listed] = [d for d in studios.list_jobs(studio_id, None, 10, 0)[0] if d.job.id == job_id]
    read = studios.get_job(studio_id, job_id)
    assert read.job.model_dump() == listed.job.model_dump()
    assert read.depends_on == listed.depends_on == sorted([first, second])
    assert read.progress == listed.progress
    progress = read.progress
    assert (progress.frames_total, progress.frames_done, progress.frames_failed) == (3000, 3, 1)
    assert (progress.frames_running, progress.frames_queued) == (2, 3000 - 6)
    assert progress.energy.frames == 3 and progress.energy.render_seconds == 1.5 * 2 + 2.0
    with pytest.raises(NotFound):
        studios.get_job(studio_id + 1, job_id)
    with pytest.raises(NotFound):
        studios.get_job(studio_id, job_id + 1)


def _template(*steps: dict[str, Any]) -> TemplateRequest:
    document = {"specificationVersion": "jobtemplate-2023-09", "name": "t", "steps": list(steps)}
    return TemplateRequest.model_validate({"template": document, "chunk_size": 2})


def _step(name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "parameterSpace": {
            "taskParameterDefinitions": [{"name": "F", "type": "INT", "range": "1-4"}]
        },
        "script": {"actions": {"onRun": {"command": "true", "args": ["{{Task.Param.F}}"]}}},
        **more,
    }


def test_an_openjd_steps_chunks_carry_their_tasks(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    studios.set_templates("pixar-east", True)
    studios.submit_template(studio_id, _template(_step("Render")))
    scheduler.ingest([heartbeat(slots=2)])
    sent = sorted(scheduler.dispatch_tick(), key=lambda m: m.frames)
    assert [m.tasks for m in sent] == [
        [{"frames": [f], "parameters": {"F": ["INT", str(f)]}} for f in m.frames] for m in sent
    ]
    assert [m.frames for m in sent] == [[1, 2], [3, 4]]
    assert {m.renderer for m in sent} == {"openjd"}


def test_an_openjd_step_goes_to_the_nodes_whose_capabilities_meet_its_host_requirements(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    studios.set_templates("pixar-east", True)
    needs = {
        "amounts": [{"name": "amount.studio.licences", "min": 1}],
        "attributes": [{"name": "attr.worker.os.family", "anyOf": ["windows"]}],
    }
    [detail] = studios.submit_template(
        studio_id, _template(_step("Comp", hostRequirements=needs))
    ).jobs
    assert detail.job.id is not None
    linux = {
        "amounts": {"amount.studio.licences": 2},
        "attributes": {"attr.worker.os.family": ["linux"]},
    }
    scheduler.ingest([heartbeat("linux-node", slots=2, capabilities=linux)])
    assert scheduler.dispatch_tick() == []
    message = studios.get_job(studio_id, detail.job.id).job.message or ""
    assert message.startswith(
        "no live node of pool cpu has amount.studio.licences 1+, "
        "attr.worker.os.family one of ['windows']"
    ), message
    unlicensed = {"attributes": {"attr.worker.os.family": ["Windows"]}}
    scheduler.ingest([heartbeat("windows-free", slots=2, capabilities=unlicensed)])
    assert scheduler.dispatch_tick() == []
    windows = {"amounts": {"amount.studio.licences": 1}, "attributes": unlicensed["attributes"]}
    scheduler.ingest([heartbeat("windows-node", slots=1, capabilities=windows)])
    sent = scheduler.dispatch_tick()
    assert sent, studios.get_job(studio_id, detail.job.id).job.message
    assert {m.node for m in sent} == {"windows-node"}
    assert studios.get_job(studio_id, detail.job.id).job.message is None


def test_a_lost_nodes_chunks_go_to_another_node_and_its_late_events_are_ignored(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    clock: Clock,
    settings: Settings,
    fake_broker: RecordingBroker,
) -> None:
    job_id = submit(studios, studio_id, "1")
    scheduler.ingest([heartbeat("node-a", slots=1)])
    lost = scheduler.dispatch_tick()[0]
    scheduler.ingest([event("started", lost, "node-a")])
    clock.now += settings.node_timeout + 1
    scheduler.ingest([heartbeat("node-b", slots=1)])
    scheduler.reconcile()
    assert {n.name: n.state for n in studios.list_nodes()} == {"node-a": "lost", "node-b": "online"}
    assert fake_broker.revoked == [f"chunk-{lost.chunk_id}-attempt-1"]
    retry = scheduler.dispatch_tick()[0]
    assert retry.attempt == 2
    scheduler.ingest([event("started", retry, "node-b")])
    fake_broker.revoked.clear()
    scheduler.ingest([event("started", lost, "node-a")])  # Celery brings the old message back
    assert fake_broker.revoked == [f"chunk-{lost.chunk_id}-attempt-1"]  # stopped at once
    scheduler.ingest([finished(lost, "node-a")])  # node-a comes back with its old result
    assert count(engine, FrameResultRow) == 0
    scheduler.ingest([finished(retry, "node-b")])
    (result,) = rows(engine, FrameResultRow)
    assert (result.node, result.attempt) == ("node-b", 2)
    assert studios.get_job(studio_id, job_id).job.state == "done"


def test_cancel_revokes_running_attempts_on_the_next_reconcile(
    scheduler: Scheduler, studios: StudioService, studio_id: int, fake_broker: RecordingBroker
) -> None:
    job_id = submit(studios, studio_id, "1-5")
    scheduler.ingest([heartbeat(slots=2)])
    sent = scheduler.dispatch_tick()
    scheduler.ingest([event("started", sent[0])])
    studios.cancel_job(studio_id, job_id)
    scheduler.reconcile()
    assert sorted(fake_broker.revoked) == sorted(f"chunk-{m.chunk_id}-attempt-1" for m in sent)
    scheduler.ingest([finished(sent[0])])  # too late: the job is cancelled
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "cancelled"
    assert detail.progress.frames_done == 0
    assert scheduler.dispatch_tick() == []


def test_chunks_lost_by_redis_are_sent_again(
    engine: Engine,
    settings: Settings,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
    broker: redis.Redis,
) -> None:
    app = make_celery(settings)
    real = Scheduler(engine, settings, CeleryBroker(app), clock)
    submit(studios, studio_id, "1-2")
    real.ingest([heartbeat(slots=2)])
    sent = real.dispatch_tick()
    assert len(sent) == 2 and broker.llen("node.node-a") == 2
    clock.now += settings.redispatch_after + 1
    real.ingest([heartbeat(slots=2)])
    real.reconcile()
    assert real.dispatch_tick() == []  # still in the queue: workers are just slow
    broker.flushdb()  # Redis restarts empty
    real.reconcile()
    resent = real.dispatch_tick()
    assert sorted((m.chunk_id, m.attempt) for m in resent) == sorted((m.chunk_id, 2) for m in sent)
    assert broker.llen("node.node-a") == 2
    assert {j.state for j in rows(engine, JobRow)} == {"running"}


def test_only_the_queues_that_lost_their_chunks_send_them_again(
    engine: Engine,
    settings: Settings,
    studios: StudioService,
    studio_id: int,
    clock: Clock,
    broker: redis.Redis,
) -> None:
    """Every queue holding unclaimed chunks is asked at once (a rack gone silent is
    hundreds of them): each answers for itself."""
    real = Scheduler(engine, settings, CeleryBroker(make_celery(settings)), clock)
    submit(studios, studio_id, "1-12")
    beats = [heartbeat(name, slots=1) for name in ("node-a", "node-b", "node-c")]
    real.ingest(beats)
    sent = real.dispatch_tick()
    lost = sorted(m.chunk_id for m in sent if m.node != "node-a")
    assert {m.node for m in sent} == {"node-a", "node-b", "node-c"}
    clock.now += settings.redispatch_after + 1
    real.ingest(beats)
    broker.delete("node.node-b", "node.node-c")  # lost; node-a's queue still holds its own
    real.reconcile()
    resent = real.dispatch_tick()
    assert sorted(m.chunk_id for m in resent) == lost and {m.attempt for m in resent} == {2}


def test_a_running_attempt_its_node_no_longer_holds_renders_again(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    """Events lost with the broker (a flush): the node's heartbeat tells."""
    submit(studios, studio_id, "1-2")
    scheduler.ingest([heartbeat(slots=2)])
    first, second = scheduler.dispatch_tick()
    scheduler.ingest([event("started", first, at=100.0), event("started", second, at=100.0)])
    holding = [f"chunk-{second.chunk_id}-attempt-1"]
    scheduler.ingest([{**heartbeat(slots=2), "at": 101.0, "tasks": []}])  # too soon to tell
    assert {c.state for c in rows(engine, ChunkRow)} == {"running"}
    scheduler.ingest([{**heartbeat(slots=2), "at": 110.0, "tasks": holding}])
    states = {c.id: c.state for c in rows(engine, ChunkRow)}
    assert states == {first.chunk_id: "queued", second.chunk_id: "running"}
    again = scheduler.dispatch_tick()
    assert [(m.chunk_id, m.attempt) for m in again] == [(first.chunk_id, 2)]


def test_studios_share_slots_by_weight_within_operator_terms(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    other, _ = studios.create_studio("aardman-east")
    assert other.id is not None
    studios.set_weight("aardman-east", 3)
    light = submit(studios, studio_id, "1-40")
    heavy = submit(studios, other.id, "1-40")
    scheduler.ingest([heartbeat(slots=7)])  # 7 slots + a buffer of 1
    first = Counter(m.job_id for m in scheduler.dispatch_tick())
    assert first == {light: 2, heavy: 6}

    studios.set_terms("pixar-east", "cpu", minimum=5)
    studios.set_terms("aardman-east", "cpu", maximum=7)
    scheduler.ingest([heartbeat("node-b", slots=8)])  # 8 more slots, and 1 of buffer each
    second = Counter(m.job_id for m in scheduler.dispatch_tick())
    assert second == {light: 8, heavy: 1}  # light to its minimum of 5 and beyond; heavy capped


def test_a_job_past_its_failure_limit_stops_and_a_retry_resumes_it(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine
) -> None:
    job_id = submit(studios, studio_id, "1-6", max_attempts=1, max_failed_frames=2)
    scheduler.ingest([heartbeat(slots=1)])
    sent = scheduler.dispatch_tick()  # one slot and a buffer of one
    scheduler.ingest([event("failed", m, error="missing texture") for m in sent])
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "failed"
    assert "limit is 2" in (detail.job.message or "")
    assert (detail.progress.frames_failed, detail.progress.frames_cancelled) == (2, 4)
    assert scheduler.dispatch_tick() == []

    resumed = studios.retry_job(studio_id, job_id)
    assert resumed.job.state == "queued" and resumed.job.message is None
    assert resumed.progress.frames_queued == 6
    assert len(scheduler.dispatch_tick()) == 2


def test_a_limit_holds_across_ticks_and_scheduler_restarts(
    engine: Engine,
    settings: Settings,
    studios: StudioService,
    studio_id: int,
    fake_broker: RecordingBroker,
    clock: Clock,
) -> None:
    studios.set_limit("houdini", 2)
    licensed = submit(studios, studio_id, "1-10", priority=90, limits=("houdini",))
    other = submit(studios, studio_id, "1-10")
    first = Scheduler(engine, settings, fake_broker, clock)
    first.ingest([heartbeat(slots=6)])
    sent = first.dispatch_tick()
    assert Counter(m.job_id for m in sent)[licensed] == 2
    restarted = Scheduler(engine, settings, fake_broker, clock)  # counts come from the database
    restarted.ingest([finished(m) for m in sent if m.job_id == other])
    again = restarted.dispatch_tick()
    assert licensed not in {m.job_id for m in again}
    restarted.ingest([finished(next(m for m in sent if m.job_id == licensed))])
    assert [m.job_id for m in restarted.dispatch_tick()] == [licensed]


def test_a_job_waits_for_the_jobs_it_depends_on(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    lighting = submit(studios, studio_id, "1-2")
    comp = submit(studios, studio_id, "1-2", priority=90, depends_on=(lighting,))
    scheduler.ingest([heartbeat(slots=4)])
    sent = scheduler.dispatch_tick()
    assert {m.job_id for m in sent} == {lighting}
    waiting = studios.get_job(studio_id, comp)
    assert waiting.job.state == "queued" and waiting.depends_on == [lighting]
    assert waiting.job.message == f"waiting for job(s) [{lighting}] to finish"
    scheduler.ingest([finished(m) for m in sent])
    assert {m.job_id for m in scheduler.dispatch_tick()} == {comp}
    assert studios.get_job(studio_id, comp).job.message is None


def test_frame_by_frame_dependencies_release_each_frame(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    sim = submit(studios, studio_id, "1-4", max_attempts=1)
    render = submit(studios, studio_id, "1-6", priority=90, depends_on=[sim], dependency="frame")
    scheduler.ingest([heartbeat(slots=2)])
    sent = scheduler.dispatch_tick()  # 2 slots + a buffer of 1, in priority order
    # The render's frames 5 and 6 wait for nothing: the sim has no such frames.
    assert [(m.job_id, m.frames) for m in sent] == [(render, [5]), (render, [6]), (sim, [1])]
    scheduler.ingest([finished(m) for m in sent[:2]])
    assert [(m.job_id, m.frames) for m in scheduler.dispatch_tick()] == [(sim, [2]), (sim, [3])]
    scheduler.ingest([finished(m) for m in sent[2:]])  # sim frame 1 is done
    released = scheduler.dispatch_tick()
    assert [(m.job_id, m.frames) for m in released] == [(render, [1])]


@pytest.mark.parametrize("on_failure", ["fail", "wait"])
def test_a_failed_dependency_fails_or_holds_the_job(
    scheduler: Scheduler, studios: StudioService, studio_id: int, on_failure: str
) -> None:
    cache = submit(studios, studio_id, "1", max_attempts=1)
    shot = submit(studios, studio_id, "1-3", depends_on=(cache,), on_dependency_failure=on_failure)
    scheduler.ingest([heartbeat(slots=1)])
    (sent,) = scheduler.dispatch_tick()
    scheduler.ingest([event("failed", sent, error="out of memory")])
    assert scheduler.dispatch_tick() == []
    held = studios.get_job(studio_id, shot)
    assert f"job {cache} is failed" in (held.job.message or "")
    if on_failure == "fail":
        assert held.job.state == "failed" and held.progress.frames_cancelled == 3
    else:
        assert held.job.state == "queued" and held.progress.frames_queued == 3
        studios.retry_job(studio_id, cache)
        (again,) = scheduler.dispatch_tick()
        scheduler.ingest([finished(again)])
        assert {m.job_id for m in scheduler.dispatch_tick()} == {shot}


def test_a_job_goes_only_to_nodes_that_match_it_and_says_when_none_can(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    job_id = submit(studios, studio_id, "1-3", requirements={"tags": ["blender-4.5"], "gpus": 1})
    scheduler.ingest([heartbeat("cpu-node", slots=4)])
    assert scheduler.dispatch_tick() == []
    message = studios.get_job(studio_id, job_id).job.message or ""
    assert message.startswith("no live node of pool cpu has 1 GPU(s), tags ['blender-4.5']")
    scheduler.ingest([heartbeat("gpu-node", slots=1, gpus=2, tags=["blender-4.5", "ocio"])])
    sent = scheduler.dispatch_tick()
    assert {m.node for m in sent} == {"gpu-node"} and len(sent) == 2  # 1 slot + a buffer of 1
    assert studios.get_job(studio_id, job_id).job.message is None


def test_a_node_a_job_keeps_failing_on_stops_getting_it(
    scheduler: Scheduler, studios: StudioService, studio_id: int, clock: Clock
) -> None:
    submit(studios, studio_id, "1", max_attempts=5)
    scheduler.ingest([heartbeat("flaky", slots=1)])
    for _ in range(2):  # node_blocklist_after is 2
        (sent,) = scheduler.dispatch_tick()
        assert sent.node == "flaky"
        scheduler.ingest([event("failed", sent, node="flaky", error="bad driver")])
        clock.now += 60  # past the retry's pause
        scheduler.ingest([heartbeat("flaky", slots=1)])
    assert scheduler.dispatch_tick() == []  # only the flaky node is alive
    scheduler.ingest([heartbeat("steady", slots=1)])
    (sent,) = scheduler.dispatch_tick()
    assert (sent.node, sent.attempt) == ("steady", 3)


def test_malformed_events_are_ignored_without_blocking_the_rest(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    submit(studios, studio_id, "1")
    scheduler.ingest([heartbeat(slots=1)])
    (sent,) = scheduler.dispatch_tick()
    outcome = scheduler.ingest(
        [
            {"kind": "finished"},  # no chunk
            {"kind": "heartbeat", "info": {"name": "half a node"}},
            {"kind": "started", "chunk_id": "x", "attempt": 1},
            {**finished(sent), "results": [{"frame": 1, "bogus": True}, None]},
        ]
    )
    assert outcome.applied == 1 and outcome.ignored == 3
    # "Finished" without a valid frame result: the attempt failed, and is retried.
    (chunk,) = rows(engine, ChunkRow)
    assert chunk.state == "queued"
    (attempt,) = rows(engine, AttemptRow)
    assert attempt.state == "failed"
    assert attempt.error == "the node reported no valid frame result"
    assert count(engine, FrameResultRow) == 0
    clock.now += 5.0  # past the retry's pause
    scheduler.ingest([heartbeat(slots=1)])
    (retry,) = scheduler.dispatch_tick()
    assert retry.attempt == 2
    scheduler.ingest([finished(retry)])
    assert rows(engine, ChunkRow)[0].state == "done"


def test_a_finished_attempt_missing_frames_fails_and_keeps_the_frames_it_rendered(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    job_id = submit(studios, studio_id, "1-3", chunk_size=3)
    scheduler.ingest([heartbeat(slots=1)])
    (sent,) = scheduler.dispatch_tick()
    valid = FrameReport(1, None, render_seconds=1.0, cpu_seconds=1.0)
    stray = FrameReport(7, None, render_seconds=1.0, cpu_seconds=1.0)  # not the chunk's
    broken = {"frame": 2, "output": None, "render_seconds": "soon", "cpu_seconds": 1.0}
    finished_event = event("finished", sent, results=[valid, stray])
    finished_event["results"].append(broken)
    scheduler.ingest([finished_event])
    (attempt,) = rows(engine, AttemptRow)
    assert attempt.state == "failed"
    assert attempt.error == "the node reported no valid frame result for frame(s) 2-3"
    assert [(r.frame, r.attempt) for r in rows(engine, FrameResultRow)] == [(1, 1)]
    assert rows(engine, ChunkRow)[0].state == "queued"

    clock.now += 5.0
    scheduler.ingest([heartbeat(slots=1)])
    (retry,) = scheduler.dispatch_tick()
    scheduler.ingest([finished(retry)])
    frames = {r.frame: r.attempt for r in rows(engine, FrameResultRow, job_id=job_id)}
    assert frames == {1: 1, 2: 2, 3: 2}  # frame 1 counted once, by the attempt that made it
    assert studios.get_job(studio_id, job_id).job.state == "done"


def test_an_event_of_another_schema_version_is_ignored_with_a_clear_message(
    scheduler: Scheduler,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    submit(studios, studio_id, "1-2")
    scheduler.ingest([heartbeat(slots=2)])
    first, second = scheduler.dispatch_tick()[:2]
    from_the_future = {**finished(first), "v": 2}
    with caplog.at_level(logging.ERROR, logger="scheduler.dispatch.ingestion"):
        outcome = scheduler.ingest([from_the_future, event("started", second), finished(second)])
    assert (outcome.applied, outcome.ignored) == (2, 1)
    complaints = [m for r in caplog.records if "ignoring a node event" in (m := r.getMessage())]
    assert len(complaints) == 1
    assert "the node speaks v2, this scheduler v1" in complaints[0]
    states = {c.id: c.state for c in rows(engine, ChunkRow)}
    assert states[first.chunk_id] == "dispatched" and states[second.chunk_id] == "done"


def test_a_batch_that_cannot_be_ingested_is_set_aside(
    settings: Settings, broker: redis.Redis
) -> None:
    publisher = EventPublisher(settings.effective_broker_url)
    consumer = EventConsumer(settings.effective_broker_url)
    publisher.publish([{"kind": "started", "n": 1}, {"kind": "started", "n": 2}])
    assert [e["n"] for e in consumer.fetch(10, 0.5)] == [1, 2]
    assert [e["n"] for e in consumer.fetch(10, 0.5)] == [1, 2]  # unacknowledged: again
    consumer.set_aside()
    assert consumer.fetch(10, 0.1) == []
    assert broker.llen("renderfarm:events:dead") == 2
    consumer.close()


def test_what_a_renderer_warns_of_reaches_the_studio_once(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    job_id = submit(studios, studio_id, "1-2")
    scheduler.ingest([heartbeat(slots=2)])
    sent = scheduler.dispatch_tick()
    missing = "missing texture //textures/wood.png"
    for message in sent:  # both chunks warn of the same texture
        results = [FrameReport(f, None, 1.0, 1.0) for f in message.frames]
        scheduler.ingest([event("finished", message, results=results, warnings=[missing])])
    detail = studios.get_job(studio_id, job_id)
    assert detail.job.state == "done"
    assert detail.job.warnings == [missing]


def test_heartbeats_in_bulk_flag_only_what_changes_the_dispatch(
    scheduler: Scheduler, engine: Engine, clock: Clock
) -> None:
    """A node beating as before only lives (and says how busy); a new node, one that
    offers something else, or one back from lost makes the dispatch look at once."""
    assert scheduler.ingest([heartbeat("node-a"), heartbeat("node-b")]).nodes_changed == {
        "node-a",
        "node-b",
    }
    registered = clock.now
    assert {(n.state, n.admin, n.registered_at) for n in rows(engine, NodeRow)} == {
        ("online", "enabled", registered)
    }
    clock.now += 5
    again = scheduler.ingest([heartbeat("node-a", running=1), heartbeat("node-b")])
    assert not again.nodes_changed and not again.dispatch_now
    nodes = {n.name: n for n in rows(engine, NodeRow)}
    assert nodes["node-a"].running == 1 and nodes["node-a"].last_heartbeat == clock.now
    clock.now += 5
    assert scheduler.ingest([heartbeat("node-a", tags=["gpu-lab"])]).nodes_changed
    assert rows(engine, NodeRow, name="node-a")[0].tags == ["gpu-lab"]
    clock.now += 120  # both silent past the timeout
    scheduler.reconcile()
    assert {n.state for n in rows(engine, NodeRow)} == {"lost"}
    assert scheduler.ingest([heartbeat("node-b")]).nodes_changed == {"node-b"}
    back = rows(engine, NodeRow, name="node-b")[0]
    assert (back.state, back.last_heartbeat, back.registered_at) == (
        "online", clock.now, registered
    )  # fmt: skip


def test_the_node_roster_is_read_again_when_an_operator_rings_or_a_node_is_lost(
    scheduler: Scheduler,
    fake_broker: RecordingBroker,
    studios: StudioService,
    studio_id: int,
    engine: Engine,
    clock: Clock,
) -> None:
    """Ticks reuse the live nodes they read (ten thousand are costly to read each
    tick); an operator's drain (the API's bell) or a node marked lost is seen at once."""
    submit(studios, studio_id, "1-40")
    scheduler.ingest([heartbeat("node-a", slots=2), heartbeat("node-b", slots=2)])
    first = scheduler.dispatch_tick()
    assert {m.node for m in first} == {"node-a", "node-b"}
    rung: list[str] = []
    operators = OperatorService(engine, clock, wake=rung.append)
    operators.set_node("node-a", "drain")
    assert rung == ["node-a"]
    wake = {"kind": "wake", "node": "node-a"}  # what the bell sends for it
    outcome = scheduler.ingest([wake, *(finished(m, m.node or "") for m in first)])
    assert outcome.woken and outcome.ignored == 0 and outcome.dispatch_now
    assert {m.node for m in scheduler.dispatch_tick()} == {"node-b"}  # room on both
    clock.now += 30
    scheduler.ingest([heartbeat("node-a", slots=2)])  # node-b falls silent
    clock.now += 40
    scheduler.reconcile()  # node-b is lost: 70 s without a heartbeat
    operators.set_node("node-a", "enable")
    scheduler.ingest([wake, heartbeat("node-a", slots=2)])
    assert {m.node for m in scheduler.dispatch_tick()} == {"node-a"}


def test_the_roster_reads_the_farm_again_slice_by_slice_so_no_change_goes_unseen(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    """A change no bell and no heartbeat told of (a row written by hand, a bell lost
    in an outage) is seen within ``NodeRoster.MAX_AGE`` seconds: each tick reads a
    slice of the farm again, by name, the whole of it within that time; and a slice
    never loses a live node, whatever order the database sorts names in."""
    if engine.dialect.name == "postgresql":  # an order of names unlike Python's
        with engine.begin() as connection:
            connection.execute(
                text('ALTER TABLE nodes ALTER COLUMN name TYPE varchar COLLATE "en-x-icu"')
            )
    # Nodes here finish all they were sent by the next tick, ever faster: queues one
    # deep beyond their slot keep each tick's dispatch to one chunk a node.
    scheduler.settings = scheduler.settings.model_copy(update={"max_dispatch_buffer": 1})
    submit(studios, studio_id, "1-2000")
    names = [f"{head}{sep}{i:02d}" for i in range(5) for head in ("node", "Node") for sep in "-_"]
    drained = names[7]
    scheduler.ingest([heartbeat(name, slots=1) for name in names])
    sent = scheduler.dispatch_tick()
    assert {m.node for m in sent} == set(names)
    with Session(engine) as session:  # by hand: no bell rings
        session.execute(
            update(NodeRow).where(col(NodeRow.name) == drained).values(admin="draining")
        )
        session.commit()
    for tick in range(1, 16):  # a tick each half second, the nodes finishing what they had
        done = [finished(m, m.node or "") for m in sent]
        outcome = scheduler.ingest([*done, *(heartbeat(name, slots=1) for name in names)])
        assert not outcome.nodes_changed  # they report what they reported before
        clock.now += NodeRoster.MAX_AGE / 10
        sent = scheduler.dispatch_tick()
        reached = {m.node for m in sent}
        assert reached >= set(names) - {drained}  # no live node lost by a slice
        if tick >= 10:  # the whole farm read again since the drain
            assert drained not in reached


def test_every_node_is_read_again_within_max_age_whatever_changes_meanwhile(
    engine: Engine,
) -> None:
    """The roster against nodes changed by hand one tick after another (nodes leaving
    shift the names the slices follow), a node added by hand, a clock stepped back and
    a pause between ticks: each change is in the roster within ``MAX_AGE`` and a tick."""
    tick, now = NodeRoster.MAX_AGE / 10, 1_000_000.0
    names = [f"n{i:03d}" for i in range(100)]
    with Session(engine) as session:
        for name in names:
            session.add(NodeRow(name=name, pool="cpu", hostname=name, slots=2, cores=8,
                                memory_bytes=2**34, state="online", last_heartbeat=now,
                                registered_at=now))  # fmt: skip
        session.commit()

    def write(**change: Any) -> None:  # by hand: no heartbeat, no bell
        with Session(engine) as session:
            session.execute(update(NodeRow).values(last_heartbeat=now))
            for name, admin in change.items():
                named = col(NodeRow.name) == name
                session.execute(update(NodeRow).where(named).values(admin=admin))
            session.commit()

    def live() -> set[str]:
        with Session(engine) as session:
            room = roster.room(session, now - 60, now, lambda pool: 0)
        return set(room.live.views)

    roster = NodeRoster()
    assert live() == set(names)
    expected, since = set(names), {}
    for step in range(60):  # each tick one more node drained, one enabled again
        now += tick
        leaving, back = names[(step * 7) % 100], names[(step * 7 + 50) % 100]
        write(**{leaving: "draining", back: "enabled"})
        expected = (expected - {leaving}) | {back}
        since[leaving] = since[back] = now
        seen = live()
        for name, at in since.items():
            if now - at >= NodeRoster.MAX_AGE + tick:
                assert (name in seen) == (name in expected), (name, now - at)
    with Session(engine) as session:  # a node no heartbeat told of
        session.add(NodeRow(name="n050a", pool="cpu", hostname="x", slots=2, cores=8,
                            memory_bytes=2**34, state="online", last_heartbeat=now,
                            registered_at=now))  # fmt: skip
        session.commit()
    for _ in range(11):
        now += tick
        write()
        seen = live()
    assert seen == expected | {"n050a"}
    now -= 3600  # the clock steps back: the next tick reads all
    write(n001="disabled")
    assert "n001" not in live()
    now += 60  # a pause (an outage, a standby taking over): the next tick reads all
    write(n001="enabled", n002="disabled")
    assert {"n001", "n002"} & live() == {"n001"}


def test_the_pools_pace_counts_rendered_chunks_not_failed_ones(
    scheduler: Scheduler, studios: StudioService, studio_id: int
) -> None:
    """How deep a pool's queues go follows the chunks it rendered: a node failing
    every chunk at once is not sent more for failing faster."""
    submit(studios, studio_id, "1-4")
    scheduler.ingest([heartbeat(slots=4)])
    sent = scheduler.dispatch_tick()
    assert len(sent) == 4
    failing = scheduler.ingest([event("failed", m, error="renderer crashed") for m in sent[:3]])
    assert not failing.finished
    rendered = scheduler.ingest([finished(sent[3])])
    assert rendered.finished == {"cpu": 1}
