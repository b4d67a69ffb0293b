"""Frames billed at ingestion with their region's figures; job totals and daily usage
over the API. A real database; node events are written by hand."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.core.rollups import attempts_change, totals_change
from scheduler.db import AttemptRow, AttemptTotal, ChunkRow, FrameResultRow, FrameTotal, Region
from scheduler.db.engine import alembic_config
from scheduler.dispatch.scheduler import BILLER_SECONDS, Scheduler
from scheduler.errors import InvalidRequest
from scheduler.settings import Settings
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.regions import UNKNOWN_REGION, set_region
from scheduler.wire.messages import ChunkMessage, FrameReport
from tests.conftest import farm_env
from tests.integration.conftest import Clock, RecordingBroker, event, heartbeat, rows, submit

pytestmark = pytest.mark.integration

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def report(frame: int, joules: Any) -> FrameReport:
    """A frame's report; ``joules`` may be any JSON value, as a faulty node may send."""
    return FrameReport(frame, None, 2.0, 1.8, energy_joules=joules, energy_method="rapl")


def sent(scheduler: Scheduler, broker: RecordingBroker, slots: int = 4) -> list[ChunkMessage]:
    scheduler.ingest([heartbeat(slots=slots)])
    scheduler.dispatch_tick()
    return broker.sent


def test_frames_are_billed_with_their_regions_figures(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine, clock: Clock,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1-3")
    one, two, three = sent(scheduler, fake_broker)
    with Session(engine) as session:
        set_region(session, "guizhou", clock(), pue=1.25, price_per_kwh=0.4)
        session.commit()
    scheduler.ingest(
        [
            event("finished", one, region="guizhou", results=[report(1, 3.6e6)]),  # 1 kWh IT
            event("finished", two, region="mars", results=[report(2, 7.2e6)]),  # unconfigured
            event("finished", three, region="guizhou", results=[report(3, None)]),  # unmetered
        ]
    )
    frames = {r.frame: r for r in rows(engine, FrameResultRow, job_id=job_id)}
    assert frames[1].facility_joules == pytest.approx(4.5e6)
    assert frames[1].cost == pytest.approx(1.25 * 0.4)
    assert frames[1].co2_grams == pytest.approx(1.25 * 536.6)
    assert frames[1].energy_method == "rapl" and frames[1].studio_id == studio_id
    # A region nobody configured is billed conservatively and appears for the operator.
    assert frames[2].facility_joules == pytest.approx(7.2e6 * UNKNOWN_REGION.pue)
    (mars,) = rows(engine, Region, name="mars")
    assert mars.pue == UNKNOWN_REGION.pue and "not configured" in mars.source
    assert frames[3].it_joules is None and frames[3].cost is None
    assert frames[3].energy_method is None
    # The billing day is the studios' (Asia/Shanghai), not UTC's.
    assert frames[1].day == dt.datetime.fromtimestamp(clock(), SHANGHAI).date()

    detail = studios.get_job(studio_id, job_id)
    assert detail.progress.energy.frames == 3 and detail.progress.energy.metered_frames == 2
    assert detail.progress.energy.it_joules == pytest.approx(3.6e6 + 7.2e6)


def test_a_regions_new_figures_bill_new_frames_only(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine, clock: Clock,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1-2")
    one, two = sent(scheduler, fake_broker)
    scheduler.ingest([event("finished", one, region="guizhou", results=[report(1, 3.6e6)])])
    with Session(engine) as session:
        set_region(session, "guizhou", clock(), price_per_kwh=1.0)
        session.commit()
    clock.now += BILLER_SECONDS  # the scheduler reads the regions' figures each second
    scheduler.ingest([event("finished", two, region="guizhou", results=[report(2, 3.6e6)])])
    frames = {r.frame: r for r in rows(engine, FrameResultRow, job_id=job_id)}
    assert frames[1].cost == pytest.approx(1.2 * 0.35)  # as installed
    assert frames[2].cost == pytest.approx(1.2 * 1.0)


def test_a_frame_is_billed_at_its_regions_tariff_hour_and_keeps_the_figures_it_used(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine, clock: Clock,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1-2")
    one, two = sent(scheduler, fake_broker)
    with Session(engine) as session:
        set_region(
            session, "guizhou", clock(), tariff=[(0, 0.2), (8, 1.0), (22, 0.2)],
            carbon_profile=[(0, 300.0), (12, 600.0)],
        )  # fmt: skip
        session.commit()
    midnight = dt.datetime(2026, 12, 1, tzinfo=SHANGHAI).timestamp()
    clock.now = midnight + 3 * 3600  # 03:00 in Guizhou: the valley, the night's carbon
    scheduler.ingest([event("finished", one, region="guizhou", results=[report(1, 3.6e6)])])
    clock.now = midnight + 14 * 3600  # 14:00: the day's price and carbon
    scheduler.ingest([event("finished", two, region="guizhou", results=[report(2, 3.6e6)])])
    frames = {r.frame: r for r in rows(engine, FrameResultRow, job_id=job_id)}
    assert (frames[1].pue, frames[1].price_per_kwh, frames[1].carbon_g_per_kwh) == (1.2, 0.2, 300)
    assert frames[1].cost == pytest.approx(1.2 * 0.2)
    assert (frames[2].price_per_kwh, frames[2].carbon_g_per_kwh) == (1.0, 600)
    assert frames[2].co2_grams == pytest.approx(1.2 * 600)
    with Session(engine) as session, pytest.raises(InvalidRequest, match="daily curve"):
        set_region(session, "guizhou", clock(), tariff=[(3, 0.2)])


def test_the_last_frames_energy_is_completed_by_finished(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1-4", chunk_size=2)
    first, second = sent(scheduler, fake_broker)
    # Apart: the frame event in one batch, "finished" in the next.
    scheduler.ingest([event("frame", first, region="guizhou", result=report(1, 100.0))])
    scheduler.ingest(
        [
            event("frame", first, region="guizhou", result=report(2, 50.0)),
            event("finished", first, region="guizhou",
                  results=[report(1, 100.0), report(2, 55.0)]),
        ]
    )  # fmt: skip
    # Together: both in one batch.
    scheduler.ingest(
        [
            event("frame", second, region="guizhou", result=report(3, 10.0)),
            event("frame", second, region="guizhou", result=report(4, 20.0)),
            event("finished", second, region="guizhou",
                  results=[report(3, 10.0), report(4, 21.0)]),
        ]
    )  # fmt: skip
    frames = {r.frame: r.it_joules for r in rows(engine, FrameResultRow, job_id=job_id)}
    assert frames == {1: 100.0, 2: 55.0, 3: 10.0, 4: 21.0}
    assert rows(engine, FrameResultRow, frame=4)[0].cost == pytest.approx(21 * 1.2 / 3.6e6 * 0.35)


def _totals(engine: Engine) -> dict[tuple[str, str, str, str], float]:
    return {
        (t.pool, t.region, t.method, t.measure): pytest.approx(t.value)
        for t in rows(engine, FrameTotal)
    }


def _counted_afresh(engine: Engine) -> dict[tuple[str, str, str, str], float]:
    """The totals counted from every frame row as it is stored now."""
    return totals_change([r.model_dump() for r in rows(engine, FrameResultRow)])


def test_running_totals_follow_recorded_and_restated_frames(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine, clock: Clock,
) -> None:  # fmt: skip
    """What /metrics reads (frame_totals, changed at ingestion) is what counting every
    frame again would give, a restated frame's energy and region included; and the
    migration that creates the totals counts the frames already there the same way."""
    with Session(engine) as session:
        set_region(session, "guizhou", clock(), pue=1.25, price_per_kwh=0.4)
        session.commit()
    submit(studios, studio_id, "1-6", chunk_size=2)
    first, second, third = sent(scheduler, fake_broker)
    scheduler.ingest(
        [
            event("frame", first, region="guizhou", result=report(1, 0.5)),
            event("frame", second, region="guizhou", result=report(3, None)),
        ]
    )
    scheduler.ingest(  # frame 3 is restated: now metered
        [
            event("finished", first, region="mars", results=[report(1, 0.5), report(2, 7e4)]),
            event("finished", second, region="guizhou",
                  results=[report(3, 12.0), report(4, None)]),
        ]
    )  # fmt: skip
    scheduler.ingest([event("finished", third, results=[report(5, 3.0), report(6, 4.0)])])
    fails = submit(studios, studio_id, "9", max_attempts=2)
    (failing,) = [m for m in sent(scheduler, fake_broker) if m.job_id == fails]
    scheduler.ingest([event("failed", failing, error="segfault", energy_joules=42.5)])
    assert len(rows(engine, FrameResultRow)) == 6
    counted = _counted_afresh(engine)
    assert _totals(engine) == counted
    assert counted[("cpu", "guizhou", "rapl", "frames")] == 2  # frames 3 and 4, now metered
    ended = _attempts_afresh(engine)
    assert _attempt_totals(engine) == ended
    assert (ended[("cpu", "ended")], ended[("cpu", "failed")]) == (4, 1)
    assert ended[("cpu", "joules_failed")] == 42.5

    with engine.connect() as connection:  # the migration's own count of the same rows
        command.downgrade(alembic_config(connection), "0014")
        command.upgrade(alembic_config(connection), "head")
        connection.commit()
    assert _totals(engine) == counted
    assert _attempt_totals(engine) == ended
    [retried] = rows(engine, ChunkRow, job_id=fails)  # 0016 counts its failure again
    assert (retried.state, retried.failures) == ("queued", 1)


def _attempt_totals(engine: Engine) -> dict[tuple[str, str], float]:
    return {(t.pool, t.measure): pytest.approx(t.value) for t in rows(engine, AttemptTotal)}


def _attempts_afresh(engine: Engine) -> dict[tuple[str, str], float]:
    return attempts_change(
        (a.pool, a.state, a.energy_joules)
        for a in rows(engine, AttemptRow)
        if a.state in ("done", "failed")
    )


@pytest.mark.parametrize("bad", [-5.0, "lots", float("inf"), [1]])
def test_impossible_energy_is_dropped_and_the_frame_kept(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine, bad: Any,
) -> None:  # fmt: skip
    job_id = submit(studios, studio_id, "1")
    (one,) = sent(scheduler, fake_broker)
    scheduler.ingest([event("finished", one, region="guizhou", results=[report(1, bad)])])
    (frame,) = rows(engine, FrameResultRow, job_id=job_id)
    assert frame.it_joules is None and frame.cost is None


def test_a_failed_attempts_energy_is_kept(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    engine: Engine,
) -> None:  # fmt: skip
    from scheduler.db import AttemptRow

    submit(studios, studio_id, "1")
    (one,) = sent(scheduler, fake_broker)
    scheduler.ingest([event("failed", one, error="segfault", exit_code=139, energy_joules=42.5)])
    (attempt,) = rows(engine, AttemptRow)
    assert attempt.state == "failed" and attempt.energy_joules == 42.5


def test_regions_refuse_impossible_figures(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(InvalidRequest, match="pue"):
            set_region(session, "x", 0.0, pue=0.9)
        with pytest.raises(InvalidRequest, match="carbon_g_per_kwh"):
            set_region(session, "x", 0.0, carbon_g_per_kwh=-1)


def test_usage_by_day_over_the_api(
    scheduler: Scheduler, fake_broker: RecordingBroker, studios: StudioService, studio_id: int,
    clock: Clock, client: TestClient,
) -> None:  # fmt: skip
    key = studios.create_key("pixar-east")
    auth = {"Authorization": f"Bearer {key}"}
    job_id = submit(studios, studio_id, "1-3")
    one, two, three = sent(scheduler, fake_broker)
    # 23:30 and 00:30 in Shanghai: two billing days, though one UTC day.
    evening = dt.datetime(2026, 11, 27, 23, 30, tzinfo=SHANGHAI).timestamp()
    scheduler.ingest(
        [
            event("finished", one, region="guizhou", at=evening, results=[report(1, 3.6e6)]),
            event("finished", two, region="guizhou", at=evening + 3600,
                  results=[report(2, 1.8e6)]),
            event("finished", three, region="guizhou", at=evening + 3600,
                  results=[report(3, 1.8e6)]),
        ]
    )  # fmt: skip
    usage = client.get("/v1/studios/me/usage", headers=auth)
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["currency"] == "CNY" and body["timezone"] == "Asia/Shanghai"
    assert [(d["day"], d["frames"]) for d in body["days"]] == [
        ("2026-11-27", 1),
        ("2026-11-28", 2),
    ]
    assert body["days"][0]["facility_kwh"] == pytest.approx(1.2)
    assert body["total"]["facility_kwh"] == pytest.approx(2.4)
    assert body["total"]["cost"] == pytest.approx(2.4 * 0.35)
    only = client.get("/v1/studios/me/usage?since=2026-11-28&until=2026-11-28", headers=auth)
    assert [d["day"] for d in only.json()["days"]] == ["2026-11-28"]

    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["energy"]["it_joules"] == pytest.approx(7.2e6)
    assert job["energy"]["per_frame"]["it_joules"] == pytest.approx(2.4e6)
    frames = client.get(f"/v1/jobs/{job_id}/frames", headers=auth).json()
    assert [f["energy_joules"] for f in frames] == [3.6e6, 1.8e6, 1.8e6]
    assert {f["energy_method"] for f in frames} == {"rapl"}

    other = studios.create_studio("aardman-east")[1]
    nothing = client.get("/v1/studios/me/usage", headers={"Authorization": f"Bearer {other}"})
    assert nothing.json()["days"] == [] and nothing.json()["total"] is None


@pytest.mark.parametrize(
    ("query", "named"),
    [("since=2026-12-01&until=2026-11-01", "since"), ("since=yesterday", "since")],
)
def test_bad_usage_queries_are_422_naming_the_field(
    studios: StudioService, client: TestClient, query: str, named: str
) -> None:
    key = studios.create_studio("weta-east")[1]
    response = client.get(
        f"/v1/studios/me/usage?{query}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 422
    assert named in response.text


def test_operators_set_and_list_regions_from_the_command_line(
    settings: Settings, engine: Engine
) -> None:
    def renderfarm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scheduler.launch.cli", "region", *args],
            env=farm_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    made = renderfarm(
        "set", "guizhou-gui-an", "--pue", "1.15", "--price", "0.3", "--carbon", "120",
        "--source", "2026 power purchase agreement",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "guizhou-gui-an: PUE 1.15, 0.3 CNY/kWh, 120 gCO2/kWh" in made.stdout
    refused = renderfarm("set", "guizhou-gui-an", "--pue", "0.8")
    assert refused.returncode == 1 and "pue" in refused.stdout
    listed = renderfarm("list").stdout.splitlines()
    assert [line.split(":")[0] for line in listed] == [
        "guizhou", "guizhou-gui-an", "guizhou-hydro", "zhejiang",
    ]  # fmt: skip
    assert "2026 power purchase agreement" in listed[1] and "PUE 1.15" in listed[1]
    # the installed regions say they are defaults and where their figures come from
    for line in (listed[0], listed[2], listed[3]):
        assert "(default: " in line, line
        assert "MEE/NBS" in line or "IPCC" in line, line
    assert "0h:0.26,7h:0.65,11h:0.26,14h:0.65,16h:1.2025,23h:0.65 CNY/kWh" in listed[3]


def test_operators_link_regions_from_the_command_line(settings: Settings, engine: Engine) -> None:
    def renderfarm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scheduler.launch.cli", "region", *args],
            env=farm_env(settings), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    installed = renderfarm("links").stdout.splitlines()
    assert [line.split(" (")[0] for line in installed] == [
        "guizhou - zhejiang: 1000 Mbit/s, 15 ms, 0.5 CNY/GB",
        "guizhou-hydro - zhejiang: 1000 Mbit/s, 15 ms, 0.5 CNY/GB",
    ]
    assert all("(default: Hangzhou to Guiyang" in line for line in installed)
    made = renderfarm(
        "link", "zhejiang", "guizhou", "--bandwidth-mbps", "10000", "--latency-ms", "14",
        "--price-per-gb", "0.2", "--source", "2027 carrier contract",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == (
        "guizhou - zhejiang: 10000 Mbit/s, 14 ms, 0.2 CNY/GB (2027 carrier contract)"
    )
    link = ["--bandwidth-mbps", "100", "--latency-ms", "5"]
    for args, complaint in [
        (["zhejiang", "mars", *link], "no region 'mars'"),
        (["zhejiang", "zhejiang", *link], "to itself"),
        (["zhejiang", "guizhou", "--bandwidth-mbps", "0", "--latency-ms", "5"], "bandwidth"),
        (["zhejiang", "guizhou", "--bandwidth-mbps", "9", "--latency-ms", "-3"], "latency_ms"),
        (["zhejiang", "guizhou", "--latency-ms", "5"], "--bandwidth-mbps"),
    ]:
        refused = renderfarm("link", *args)
        assert refused.returncode == 1 and complaint in refused.stdout, (args, refused)
    assert "2027 carrier contract" in renderfarm("links").stdout  # the refused changed nothing
    gone = renderfarm("link", "guizhou", "zhejiang", "--remove")
    assert gone.returncode == 0 and "forgotten" in gone.stdout
    assert [line.split(":")[0] for line in renderfarm("links").stdout.splitlines()] == [
        "guizhou-hydro - zhejiang"
    ]
