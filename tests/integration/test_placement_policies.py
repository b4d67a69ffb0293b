"""Placement that weighs cost and carbon, at dispatch, against a real database: a job
placed ``cheapest`` or ``greenest`` goes first to the nodes of the region whose frame
costs least now; one whose deadline allows waits for a cheaper window, saying until
when, and starts then; ``fastest`` and a deadline too near to wait start at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import FrameResultRow, JobRow, ManifestRow
from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import InvalidRequest
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.regions import set_link, set_region
from scheduler.wire.messages import FrameReport
from tests.integration.conftest import Clock, event, heartbeat, submit

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
MIDNIGHT = dt.datetime(2026, 12, 1, tzinfo=CST).timestamp()  # Guizhou's, and Shanghai's


def regions(engine: Engine, clock: Clock) -> None:
    with Session(engine) as session:
        set_region(session, "shanghai", clock(), pue=1.4, price_per_kwh=0.9, carbon_g_per_kwh=580)
        set_region(
            session, "guizhou-hydro", clock(), pue=1.2, price_per_kwh=0.35,
            carbon_g_per_kwh=24,
        )  # fmt: skip
        set_region(
            session, "night-tariff", clock(), pue=1.2, carbon_g_per_kwh=500,
            tariff=[(0, 0.2), (8, 1.2), (22, 0.2)],
        )  # fmt: skip
        session.commit()


def nodes(scheduler: Scheduler, *placed: tuple[str, str]) -> None:
    scheduler.ingest([heartbeat(name, slots=2, region=region) for name, region in placed])


@pytest.mark.parametrize("policy", ["cheapest", "greenest"])
def test_a_job_goes_first_to_the_region_whose_frame_costs_least(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock,
    policy: str,
) -> None:  # fmt: skip
    regions(engine, clock)
    submit(studios, studio_id, "1-5", placement=policy)
    nodes(scheduler, ("east-1", "shanghai"), ("west-1", "guizhou-hydro"))
    sent = scheduler.dispatch_tick()
    # west-1's room (2 slots + a buffer of 1) fills first; what is left goes east
    assert [m.node for m in sent] == ["west-1"] * 3 + ["east-1"] * 2


def test_fastest_takes_the_emptiest_node_whatever_its_region(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    regions(engine, clock)
    submit(studios, studio_id, "1")
    scheduler.ingest(
        [
            heartbeat("east-1", slots=4, region="shanghai"),
            heartbeat("west-1", slots=1, region="guizhou-hydro"),
        ]
    )
    [sent] = scheduler.dispatch_tick()
    assert sent.node == "east-1"


def test_a_job_with_room_before_its_deadline_waits_for_the_night_tariff(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock
) -> None:
    regions(engine, clock)
    clock.now = MIDNIGHT + 9 * 3600  # 09:00, the day price
    deadline = dt.datetime.fromtimestamp(MIDNIGHT + 33 * 3600, CST)  # 09:00 tomorrow
    job_id = submit(
        studios, studio_id, "1-6", placement="cheapest", deadline=deadline.isoformat(),
        timeout=600,
    )  # fmt: skip
    nodes(scheduler, ("night-1", "night-tariff"))
    assert scheduler.dispatch_tick() == []
    message = studios.get_job(studio_id, job_id).job.message or ""
    assert message.startswith("waits for a 83% cheaper window: starts at 2026-12-01 22:00"), message
    # 6 frames of at most 600 s on the pool's 2 slots (not its queue's 3 places): three
    # waves of 750 s with the margin, and 300 s more, before 09:00 tomorrow
    assert "by 2026-12-02 08:17 at the latest to meet its deadline" in message, message
    clock.now = MIDNIGHT + 22 * 3600 + 1  # the valley
    nodes(scheduler, ("night-1", "night-tariff"))
    sent = scheduler.dispatch_tick()
    assert len(sent) == 3  # 2 slots and a buffer of 1
    assert studios.get_job(studio_id, job_id).job.message is None


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"placement": "fastest"}, "fastest never waits"),
        ({"placement": "cheapest"}, "no deadline: nothing to plan against"),
        ({"placement": "cheapest", "deadline_hours": 1}, "too near to wait"),
    ],
)
def test_jobs_that_cannot_or_need_not_wait_start_now(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock,
    extra: dict[str, Any], why: str,
) -> None:  # fmt: skip
    regions(engine, clock)
    clock.now = MIDNIGHT + 9 * 3600
    fields: dict[str, Any] = {"placement": extra["placement"], "timeout": 600}
    if "deadline_hours" in extra:
        deadline = clock.now + extra["deadline_hours"] * 3600
        fields["deadline"] = dt.datetime.fromtimestamp(deadline, CST).isoformat()
    submit(studios, studio_id, "1-4", **fields)
    nodes(scheduler, ("night-1", "night-tariff"))
    assert len(scheduler.dispatch_tick()) == 3, why


def test_the_bill_says_what_placement_saved_against_the_studios_home_region(
    client: TestClient, scheduler: Scheduler, studios: StudioService, studio_id: int,
    engine: Engine, clock: Clock,
) -> None:  # fmt: skip
    regions(engine, clock)
    studios.set_home_region("pixar-east", "shanghai")
    job_id = submit(studios, studio_id, "1-2", placement="greenest")
    nodes(scheduler, ("west-1", "guizhou-hydro"))
    one, two = scheduler.dispatch_tick()
    scheduler.ingest(
        [
            event("finished", one, "west-1", region="guizhou-hydro", results=[frame(1, 3.6e6)]),
            event("finished", two, "west-1", region="guizhou-hydro", results=[frame(2, None)]),
        ]
    )
    energy = studios.get_job(studio_id, job_id).progress.energy
    assert energy.baselined_frames == 1  # the unmetered frame has no bill to compare
    # 1 kWh of IT energy: 1.4 kWh, 0.9/kWh and 580 g/kWh in Shanghai, against 1.2 kWh,
    # 0.35/kWh and 24 g/kWh in the hydro hall.
    assert energy.baseline_cost - energy.compared_cost == pytest.approx(1.4 * 0.9 - 1.2 * 0.35)
    assert energy.baseline_co2_grams - energy.compared_co2_grams == pytest.approx(
        1.4 * 580 - 1.2 * 24
    )
    from api.schemas import EnergyPublic

    saved = EnergyPublic.of(energy, "CNY").saved
    assert saved is not None and saved.facility_kwh == pytest.approx(0.2)
    with pytest.raises(InvalidRequest, match="no region 'atlantis'"):
        studios.set_home_region("pixar-east", "atlantis")
    # /metrics, per pool and region, from the running totals
    metrics = client.get("/metrics").text
    line = (
        'renderfarm_placement_saved_energy_cost{currency="CNY",pool="cpu",region="guizhou-hydro"}'
    )
    [value] = [float(row.split()[-1]) for row in metrics.splitlines() if row.startswith(line)]
    assert value == pytest.approx(1.4 * 0.9 - 1.2 * 0.35)


@pytest.mark.parametrize(
    ("linked", "heavy", "first"),
    [
        (False, "output", "west-1"),  # no link configured: near, the cheap power wins
        (True, "output", "east-1"),  # 1 GB frames back over a priced link: render near
        (True, "scene", "east-1"),  # a 20 GB scene for 10 frames: likewise
        (True, "", "west-1"),  # light traffic: the link costs less than the power saves
    ],
)
def test_what_a_job_moves_over_a_priced_link_weighs_in_its_region(
    scheduler: Scheduler, studios: StudioService, studio_id: int, engine: Engine, clock: Clock,
    linked: bool, heavy: str, first: str,
) -> None:  # fmt: skip
    regions(engine, clock)
    studios.set_home_region("pixar-east", "shanghai")
    with Session(engine) as session:
        if linked:
            set_link(session, "shanghai", "guizhou-hydro", clock(), 100.0, 15.0, 0.5)
        session.commit()
    scheduler.siting.ttl = 0.0  # read what was measured at every tick
    job_id = submit(studios, studio_id, "1-10", placement="cheapest")
    if heavy == "scene":
        with Session(engine) as session:
            manifest = ManifestRow(studio_id=studio_id, files=1, size=20 * 10**9, created_at=0)
            session.add(manifest)
            session.flush()
            job = session.get(JobRow, job_id)
            assert job is not None
            job.manifest_id = manifest.id
            session.add(job)
            session.commit()
    nodes(scheduler, ("west-1", "guizhou-hydro"))
    one, *_ = scheduler.dispatch_tick()  # only the west is up yet
    # its first frame: 0.1 kWh of IT energy (0.042 there against 0.126 in Shanghai),
    # and an output of 1 GB (0.5 to bring back) where the output is heavy
    size = 10**9 if heavy == "output" else 2 * 10**6
    report = FrameReport(1, None, 2.0, 1.8, 3.6e5, "rapl", output_bytes=size)
    scheduler.ingest([event("finished", one, "west-1", region="guizhou-hydro", results=[report])])
    with Session(engine) as session:
        [stored] = session.exec(select(FrameResultRow.output_bytes)).all()
    assert stored == size  # recorded with the frame
    nodes(scheduler, ("east-1", "shanghai"), ("west-1", "guizhou-hydro"))
    sent = scheduler.dispatch_tick()
    assert sent and sent[0].node == first


def frame(number: int, joules: float | None) -> FrameReport:
    return FrameReport(number, None, 2.0, 1.8, energy_joules=joules, energy_method="rapl")
