"""The carbon feed against a real local HTTP server in the Carbon Aware SDK's shape: the
forecast is stored and bills and placement use it; a region whose feed fails keeps its
last forecast, and the failure is counted."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.db import Region
from scheduler.dispatch.carbon_feed import CarbonFeed, FeedError, parse_forecast
from scheduler.usecases.regions import set_region, signals_of
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration

START = dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC).timestamp()  # the feed's first point


def answer(location: str, value: float) -> list[dict[str, object]]:
    return [
        {
            "location": location,
            "forecastData": [
                {"location": location, "timestamp": "2026-12-01T06:00:00Z", "duration": 60,
                 "value": value},
                {"location": location, "timestamp": "2026-12-01T07:00:00Z", "duration": 60,
                 "value": value / 2},
            ],
        }
    ]  # fmt: skip


class Feed:
    """A Carbon Aware SDK stand-in: an answer per location; a status of 500 for those in
    ``failing``."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.failing: set[str] = set()
        self.requests: list[str] = []


@pytest.fixture
def feed() -> Iterator[tuple[Feed, str]]:
    state = Feed()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            location = parse_qs(urlparse(self.path).query)["location"][0]
            state.requests.append(location)
            if location in state.failing or location not in state.values:
                self.send_response(500)
                self.end_headers()
                return
            body = json.dumps(answer(location, state.values[location])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/emissions/forecasts/current"
        yield state, url + "?location={location}"
    finally:
        server.shutdown()


def failures(region: str) -> float:
    value = REGISTRY.get_sample_value("renderfarm_carbon_feed_failures_total", {"region": region})
    return value or 0.0


def test_forecasts_are_stored_used_and_kept_when_the_feed_fails(
    engine: Engine, feed: tuple[Feed, str], clock: Clock
) -> None:
    state, url = feed
    with Session(engine) as session:
        set_region(session, "guizhou", clock(), carbon_g_per_kwh=536.6)
        session.get(Region, "guizhou").feed_location = "CN-GZ"  # type: ignore[union-attr]
        session.commit()
    state.values = {"CN-GZ": 400.0, "guizhou-hydro": 30.0, "zhejiang": 560.0}
    clock.now = START
    assert CarbonFeed(engine, url, clock=clock).refresh() == {
        "guizhou": None,
        "guizhou-hydro": None,
        "zhejiang": None,
    }
    # each region by its feed name
    assert set(state.requests) == {"CN-GZ", "guizhou-hydro", "zhejiang"}
    with Session(engine) as session:
        guizhou = signals_of(session.get(Region, "guizhou"))  # type: ignore[arg-type]
    assert guizhou.at(START + 600).carbon_g_per_kwh == 400.0
    assert guizhou.at(START + 3600 + 600).carbon_g_per_kwh == 200.0
    assert guizhou.at(START + 3 * 3600).carbon_g_per_kwh == 536.6  # past it: the profile

    before = failures("guizhou")
    state.failing = {"CN-GZ"}
    clock.now = START + 900
    outcome = CarbonFeed(engine, url, clock=clock).refresh()
    assert outcome["guizhou"] is not None and outcome["guizhou-hydro"] is None
    assert failures("guizhou") == before + 1
    age = REGISTRY.get_sample_value("renderfarm_carbon_feed_age_seconds", {"region": "guizhou"})
    assert age == 900.0
    with Session(engine) as session:
        kept = signals_of(session.get(Region, "guizhou"))  # type: ignore[arg-type]
    assert kept.at(START + 600).carbon_g_per_kwh == 400.0  # the last forecast goes on


@pytest.mark.parametrize(
    "bad",
    [
        {},
        [],
        [{"forecastData": "soon"}],
        [{"forecastData": [{"timestamp": "2026-12-01T06:00:00", "duration": 5, "value": 1}]}],
        [{"forecastData": [{"timestamp": "2026-12-01T06:00:00Z", "duration": 5, "value": -1}]}],
        [{"forecastData": [{"timestamp": "2026-12-01T06:00:00Z", "duration": 0, "value": 1}]}],
        [{"forecastData": [{"timestamp": "2026-12-01T06:00:00Z", "value": 1}]}],
    ],
)
def test_an_answer_not_of_the_sdks_shape_is_refused(bad: object) -> None:
    with pytest.raises(FeedError):
        parse_forecast(bad)


def test_a_timespan_duration_reads_as_the_sdk_writes_it() -> None:
    [point] = parse_forecast(
        [
            {
                "forecastData": [
                    {"timestamp": "2026-12-01T06:00:00Z", "duration": "01:00:00", "value": 9}
                ]
            }
        ]
    )
    assert point == [START, 3600.0, 9.0]
