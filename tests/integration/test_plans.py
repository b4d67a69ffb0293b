"""renderfarm plan: a workload CSV and a farm file simulated under each policy, side by
side, with a chart; files that do not read are refused naming the line and column."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from scheduler.dispatch.scheduler import Scheduler
from scheduler.errors import InvalidRequest
from scheduler.launch.cli import app as cli
from scheduler.usecases.jobs import StudioService
from scheduler.usecases.plans import read_farm, read_workload
from scheduler.wire.messages import FrameReport
from tests.integration.conftest import Clock, event, heartbeat, submit

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples/plans"
START = "2026-12-01T09:00:00+08:00"  # the day price: cheapest waits for the night's


def plan(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        [
            "plan",
            "--workload",
            str(EXAMPLES / "film.csv"),
            "--farm",
            str(EXAMPLES / "farm.yaml"),
            "--start",
            START,
            *args,
        ],
    )
    return result.exit_code, result.output


def test_the_example_film_is_planned_under_each_policy_with_a_chart(tmp_path: Path) -> None:
    chart = tmp_path / "plan.png"
    status, said = plan("--chart", str(chart))
    assert status == 0, said
    lines = said.splitlines()
    assert lines[0].split()[:2] == ["policy", "makespan"]
    assert [line.split()[0] for line in lines[1:4]] == ["fastest", "cheapest", "greenest"]
    assert "cheapest against fastest: cost -" in said  # the valley is cheaper
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "plan.svg"
    assert plan("--chart", str(svg), "--policy", "greenest")[0] == 0
    assert svg.read_text().lstrip().startswith("<?xml")


def test_the_reports_as_json_add_up_and_meet_every_deadline() -> None:
    status, said = plan("--json")
    assert status == 0, said
    reports = {r["policy"]: r for r in json.loads(said)}
    frames = sum(
        int(line.split(",")[1]) for line in (EXAMPLES / "film.csv").read_text().split()[1:]
    )
    for report in reports.values():
        assert report["frames"] == frames == sum(report["frames_by_region"].values())
        assert report["deadlines_missed"] == 0
    assert reports["cheapest"]["cost"] < reports["fastest"]["cost"]
    assert reports["greenest"]["co2_grams"] <= reports["fastest"]["co2_grams"]
    # Guizhou is far from the studio: its scenes and frames crossed the priced link
    for report in reports.values():
        assert report["moved_bytes"] > 0
        assert report["transfer_cost"] == pytest.approx(report["moved_bytes"] / 1e9 * 0.5)


HEAD = "shot,frames,seconds_per_frame,joules_per_frame\n"


@pytest.mark.parametrize(
    ("csv", "words"),
    [
        ("", "a header row"),
        (
            HEAD + "a,10,x,1\n",
            "line 2: seconds_per_frame 'x'",
        ),
        (HEAD + "a,0,1,1\n", "line 2: frames is a whole"),
        (HEAD + "a,2.5,1,1\n", "frames is a whole"),
        (
            HEAD + "a,3,1,-1\n",
            "joules_per_frame is a number",
        ),
        ("shot,frames,seconds_per_frame\na,3,1\n", "line 2: no joules_per_frame"),
        (HEAD.strip() + ",scene_gb\na,3,1,1,-2\n", "line 2: scene_gb is a number"),
        (HEAD + "a,3,nan,1\n", "seconds_per_frame is"),
    ],
)
def test_a_workload_that_does_not_read_is_refused_naming_the_line(csv: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        read_workload(csv)


@pytest.mark.parametrize(
    ("farm", "words"),
    [
        ("regions: []", "a farm has regions"),
        ("{not yaml", "not YAML"),
        ("regions: [{slots: 1, pue: 1.2, price: 1, carbon: 1}]", "a region has a name"),
        ("regions: [{name: a, slots: 1, pue: 0.5, price: 1, carbon: 1}]", "a PUE at least 1"),
        ("regions: [{name: a, slots: 1, pue: 1.2, carbon: 1}]", "price"),
        (
            "regions: [{name: a, slots: 1, pue: 1.2, price: 1, carbon: 1, tariff: [[3, 1]]}]",
            "hour 0",
        ),
        (
            "regions: [{name: a, slots: 1, pue: 1.2, price: 1, carbon: 1, "
            "link: {bandwidth_mbps: 0}}]",
            "bandwidth is positive",
        ),
        (
            "regions: [{name: a, slots: 1, pue: 1.2, price: 1, carbon: 1, "
            "link: {bandwidth_mbps: 10, cost: 3}}]",
            "link: unknown",
        ),
        ("regions: [{name: a, slots: 1, pue: 1.2, price: 1, carbon: 1, link: 5}]", "link:"),
    ],
)
def test_a_farm_that_does_not_read_is_refused_saying_what(farm: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        read_farm(farm)


def test_bad_options_are_a_message_not_a_traceback() -> None:
    for args, words in [
        (["--policy", "cleanest"], "unknown ['cleanest']"),
        (["--start", "2026-12-01T09:00:00"], "give a time zone"),
    ]:
        result = CliRunner().invoke(
            cli,
            ["plan", "--workload", str(EXAMPLES / "film.csv"), "--farm",
             str(EXAMPLES / "farm.yaml"), *args],
        )  # fmt: skip
        assert result.exit_code == 1 and words in result.output, result.output


# POST /v1/plans ----------------------------------------------------------------------

FARM = [
    {"name": "guizhou-hydro", "slots": 8, "pue": 1.2, "price": 0.35, "carbon": 24},
    {"name": "shanghai", "slots": 8, "pue": 1.4, "tariff": [[0, 0.35], [8, 1.1]], "carbon": 560},
]


def test_a_plan_over_the_api_compares_the_policies(client: TestClient, key: dict[str, str]) -> None:
    body = {
        "workload": [
            {"name": "sh010", "frames": 40, "seconds_per_frame": 60, "joules_per_frame": 2e5,
             "deadline_hours": 12},
        ],
        "farm": FARM,
        "start": START,
    }  # fmt: skip
    answer = client.post("/v1/plans", json=body, headers=key)
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert plan["currency"] == "CNY" and plan["start"] == "2026-12-01T01:00:00+00:00"
    reports = {r["policy"]: r for r in plan["reports"]}
    assert set(reports) == {"fastest", "cheapest", "greenest"}
    assert all(r["frames"] == 40 and r["deadlines_missed"] == 0 for r in reports.values())
    assert reports["greenest"]["co2_grams"] < reports["fastest"]["co2_grams"] * 1.0001
    assert all(r["moved_bytes"] == r["transfer_cost"] == 0 for r in reports.values())
    # the same shot with a 20 GB scene and 50 MB frames, Guizhou over a priced link
    body["workload"][0].update(scene_gb=20, output_mb=50)  # type: ignore[index]
    far = {"bandwidth_mbps": 1000, "latency_ms": 15, "price_per_gb": 0.5}
    body["farm"] = [{**FARM[0], "link": far}, FARM[1]]
    answer = client.post("/v1/plans", json=body, headers=key)
    assert answer.status_code == 200, answer.text
    fastest = answer.json()["reports"][0]
    west = fastest["frames_by_region"]["guizhou-hydro"]
    assert west > 0
    assert fastest["moved_bytes"] == pytest.approx(20e9 + west * 50e6)
    assert fastest["transfer_cost"] == pytest.approx(fastest["moved_bytes"] / 1e9 * 0.5)


def test_a_plan_of_past_jobs_on_the_live_farm_moves_them_from_the_studios_home(
    client: TestClient, key: dict[str, str], studios: StudioService, scheduler: Scheduler,
    clock: Clock,
) -> None:  # fmt: skip
    """The studio's past job (its frames' measured size) on the farm's live node in
    Guizhou, from its home region in Zhejiang, over the installed link."""
    studios.set_home_region("plan-east", "zhejiang")
    clock.now = time.time()
    [studio] = [s for s in studios.list_studios() if s.name == "plan-east"]
    assert studio.id is not None
    submit(studios, studio.id, "1-2")
    scheduler.ingest([heartbeat("west-1", slots=2, region="guizhou")])
    one, two = scheduler.dispatch_tick()
    for message, frame in ((one, 1), (two, 2)):
        report = FrameReport(frame, None, 30.0, 29.0, 9000.0, "rapl", output_bytes=10**8)
        scheduler.ingest([event("finished", message, "west-1", region="guizhou",
                                results=[report])])  # fmt: skip
    answer = client.post("/v1/plans", json={"workload": "past"}, headers=key)
    assert answer.status_code == 200, answer.text
    fastest = answer.json()["reports"][0]
    assert fastest["frames_by_region"] == {"guizhou": 2}
    # two frames of 100 MB back at 0.5 per GB (the job had no scene to send)
    assert fastest["moved_bytes"] == pytest.approx(2e8)
    assert fastest["transfer_cost"] == pytest.approx(0.1)


def test_a_plan_of_the_studios_past_jobs_on_the_farms_own_nodes(
    client: TestClient, key: dict[str, str], studios: StudioService, engine: Engine
) -> None:
    refused = client.post("/v1/plans", json={"workload": "past", "farm": FARM}, headers=key)
    assert refused.status_code == 422 and "no rendered job yet" in refused.text
    no_nodes = client.post(
        "/v1/plans",
        json={"workload": [{"name": "a", "frames": 1, "seconds_per_frame": 1,
                            "joules_per_frame": 1}]},
        headers=key,
    )  # fmt: skip
    assert no_nodes.status_code == 422 and "no render slot" in no_nodes.text


def shot(**changed: object) -> dict[str, object]:
    return {"name": "a", "frames": 1, "seconds_per_frame": 1, "joules_per_frame": 1, **changed}


@pytest.mark.parametrize(
    "body",
    [
        {"workload": []},
        {"workload": "future"},
        {"workload": [shot(frames=300_000)]},
        {"workload": [shot(seconds_per_frame="NaN")], "farm": FARM},
        {"workload": [shot(name="a\u0000b")], "farm": FARM},
        {"workload": "past", "farm": [{"name": "x", "slots": 1, "pue": 0.5}]},
        {"workload": "past", "policies": ["cleanest"]},
        {"workload": "past", "start": "2026-12-01T09:00:00"},
    ],
)
def test_a_plan_that_does_not_hold_is_a_422(
    client: TestClient, key: dict[str, str], body: dict[str, object]
) -> None:
    answer = client.post("/v1/plans", json=body, headers=key)
    assert answer.status_code == 422, answer.text


@pytest.fixture
def key(studios: StudioService) -> dict[str, str]:
    return {"Authorization": f"Bearer {studios.create_studio('plan-east')[1]}"}
