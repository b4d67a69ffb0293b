"""A carbon intensity feed: forecasts of the regions' grid carbon, read every
``carbon_feed_seconds`` from the URL the operator points at (``carbon_feed_url``), in
the shape of the Green Software Foundation Carbon Aware SDK's answers
(``GET /emissions/forecasts/current?location=...``)::

    [{"location": "CN-GZ", "forecastData": [
        {"location": "CN-GZ", "timestamp": "2026-12-01T14:00:00Z", "duration": 60,
         "value": 410.5}, ...]}]

(``duration`` in minutes). Each region's forecast is stored with it (``regions.forecast``,
``forecast_at``) and overrides its carbon profile where it has values
(scheduler/core/signals.py). When the feed fails for a region, the farm goes on with the
last forecast it had (and the profile past its end), logs why, and counts it:
``renderfarm_carbon_feed_failures_total{region}``, and
``renderfarm_carbon_feed_age_seconds{region}`` since its last forecast came.

It runs in a thread of the scheduler process, off the dispatch loop: a slow feed never
slows a tick.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scheduler.db import Region

log = logging.getLogger(__name__)

FEED_FAILURES = Counter(
    "renderfarm_carbon_feed_failures_total",
    "Reads of the carbon feed that failed, by region: the last forecast stays in use.",
    ["region"],
)
FEED_AGE = Gauge(
    "renderfarm_carbon_feed_age_seconds",
    "Seconds since the carbon feed last gave the region a forecast.",
    ["region"],
)
MAX_POINTS = 2_000  # a week of five-minute values, and then some
TIMEOUT = 10.0


class FeedError(ValueError):
    """The feed's answer could not be read; ``str`` says why."""


def parse_forecast(answer: Any) -> list[list[float]]:
    """The forecast's points, ``[start, seconds, gCO2/kWh]`` by start, from an answer of
    the Carbon Aware SDK's shape. ``FeedError`` for anything else."""
    if isinstance(answer, dict):
        answer = [answer]
    if not isinstance(answer, list) or not answer or not isinstance(answer[0], dict):
        raise FeedError("not a list of forecasts")
    data = answer[0].get("forecastData")
    if not isinstance(data, list):
        raise FeedError("a forecast without forecastData")
    points = []
    for item in data[:MAX_POINTS]:
        try:
            start = _instant(item["timestamp"])
            seconds = _minutes(item["duration"]) * 60
            value = float(item["value"])
        except (KeyError, TypeError, ValueError) as error:
            raise FeedError(
                f"a forecast point that does not read: {item!r:.120} ({error})"
            ) from None
        if not (math.isfinite(value) and value >= 0 and seconds > 0):
            raise FeedError(f"a forecast point out of range: {item!r:.120}")
        points.append([start, seconds, value])
    return sorted(points)


def _instant(text: object) -> float:
    if not isinstance(text, str):
        raise ValueError("a timestamp is ISO 8601 text")
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a timestamp has a time zone")
    return moment.timestamp()


def _minutes(value: object) -> float:
    """Minutes, as a number or a TimeSpan ("01:00:00")."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (found := re.fullmatch(r"(\d+):(\d\d):(\d\d)", value)):
        hours, minutes, seconds = map(int, found.groups())
        return hours * 60 + minutes + seconds / 60
    raise ValueError(f"a duration in minutes, not {value!r}")


class CarbonFeed:
    """Reads the feed for every region and stores what it gives."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.url = url
        self.client = client or httpx.Client(timeout=TIMEOUT)
        self.clock = clock

    def refresh(self) -> dict[str, str | None]:
        """Read every region's forecast once; by region, None where it came, else why not."""
        outcome: dict[str, str | None] = {}
        with Session(self.engine) as session:
            for region in session.exec(select(Region)).all():
                outcome[region.name] = self._refresh(region)
                session.add(region)
                FEED_AGE.labels(region.name).set(
                    self.clock() - region.forecast_at if region.forecast_at else math.inf
                )
            session.commit()
        return outcome

    def _refresh(self, region: Region) -> str | None:
        location = region.feed_location or region.name
        url = self.url.replace("{location}", quote(location, safe=""))
        try:
            answer = self.client.get(url)
            answer.raise_for_status()
            region.forecast = parse_forecast(answer.json())
        except (httpx.HTTPError, ValueError) as error:  # FeedError, bad JSON
            FEED_FAILURES.labels(region.name).inc()
            log.warning(
                "carbon feed: no forecast for %s (%s); its last one stays in use",
                region.name,
                error,
            )
            return str(error) or type(error).__name__
        region.forecast_at = self.clock()
        return None

    def run(self, every: float, stop: threading.Event) -> None:
        """Refresh now and every ``every`` seconds until ``stop``; an outage of the
        database is logged and waited out like the feed's."""
        while not stop.is_set():
            try:
                self.refresh()
            except Exception:  # the database: the next turn tries again
                log.exception("carbon feed: the forecasts could not be stored")
            stop.wait(every)
