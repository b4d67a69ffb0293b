"""A region's signals over the day: its electricity price (a flat rate, or a time-of-use
tariff of peak, flat and valley hours, as Chinese provincial tariffs are), its grid's
carbon intensity (a flat figure, an hourly profile, and a forecast that overrides the
profile where it has a value), and its PUE. ``RegionSignals.at(t)`` is the region's
``RegionFigures`` at instant ``t``: what a joule rendered then costs and emits.

Hours are the region's local hours: ``utc_offset_hours`` (China is UTC+8 all year, no
daylight saving). Pure: no clock, no I/O; ``t`` is seconds since the Unix epoch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.core.energy import RegionFigures

HOUR = 3600.0
DAY = 24 * HOUR


def local_hour(t: float, utc_offset_hours: float) -> float:
    """The hour of the day (0 <= h < 24, fractional) at ``t`` where the offset applies."""
    return ((t + utc_offset_hours * HOUR) % DAY) / HOUR


@dataclass(frozen=True, slots=True)
class DailyCurve:
    """A value that follows the hour of the day: ``(from_hour, value)`` steps, the first
    from hour 0; a step holds until the next one (the last until midnight)."""

    steps: tuple[tuple[float, float], ...]
    utc_offset_hours: float = 8.0

    def __post_init__(self) -> None:
        hours = [hour for hour, _ in self.steps]
        if not self.steps or hours[0] != 0 or hours != sorted(set(hours)) or hours[-1] >= 24:
            raise ValueError("a daily curve has steps from hour 0, ascending, before 24")
        if not all(math.isfinite(value) and value >= 0 for _, value in self.steps):
            raise ValueError("a daily curve's values are finite and not negative")

    @classmethod
    def flat(cls, value: float) -> DailyCurve:
        return cls(((0.0, value),))

    @classmethod
    def hourly(cls, values: Sequence[float], utc_offset_hours: float = 8.0) -> DailyCurve:
        """24 values, one per local hour (a carbon profile)."""
        if len(values) != 24:
            raise ValueError("an hourly profile has 24 values, one per hour")
        return cls(tuple((float(h), float(v)) for h, v in enumerate(values)), utc_offset_hours)

    def at(self, t: float) -> float:
        hour = local_hour(t, self.utc_offset_hours)
        index = bisect.bisect_right([h for h, _ in self.steps], hour) - 1
        return self.steps[index][1]

    def integral(self, start: float, end: float) -> float:
        """The value integrated over ``[start, end]``, in value x seconds: whole days at
        once, so a span of months costs no more than a span of hours."""
        offset = self.utc_offset_hours * HOUR
        first_day, into_first = divmod(start + offset, DAY)
        last_day, into_last = divmod(end + offset, DAY)
        whole = (last_day - first_day) * self._within_day(DAY)  # few days: exact enough
        return whole + self._within_day(into_last) - self._within_day(into_first)

    def _within_day(self, seconds: float) -> float:
        total, hours = 0.0, seconds / HOUR
        for index, (hour, value) in enumerate(self.steps):
            until = self.steps[index + 1][0] if index + 1 < len(self.steps) else 24.0
            if hours <= hour:
                break
            total += value * (min(hours, until) - hour) * HOUR
        return total

    def changes(self, start: float, end: float) -> list[float]:
        """The instants in ``(start, end]`` where the value changes."""
        previous = self.steps[-1][1]  # what holds before midnight
        edges = []
        for hour, value in self.steps:
            if value != previous:
                edges.append(hour)
            previous = value
        found: list[float] = []
        day = start - local_hour(start, self.utc_offset_hours) * HOUR
        while edges and day <= end:
            found += [e for h in edges if start < (e := day + h * HOUR) <= end]
            day += DAY
        return found


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """One value of a forecast, as the Carbon Aware SDK answers: from ``start`` for
    ``duration`` seconds (``location``, ``time``, ``duration``, ``value``)."""

    start: float
    duration: float
    value: float


@dataclass(frozen=True, slots=True)
class Forecast:
    """Points by start time; where none covers an instant, there is no forecast."""

    points: tuple[ForecastPoint, ...] = ()

    def at(self, t: float) -> float | None:
        starts = [p.start for p in self.points]
        index = bisect.bisect_right(starts, t) - 1
        if index < 0:
            return None
        point = self.points[index]
        return point.value if t < point.start + point.duration else None

    def changes(self, start: float, end: float) -> list[float]:
        edges = {p.start for p in self.points} | {p.start + p.duration for p in self.points}
        return sorted(e for e in edges if start < e <= end)

    def overlaps(self, start: float, end: float) -> list[tuple[float, float, float]]:
        """``(from, to, value)`` of the points' parts within ``[start, end]``."""
        found = []
        for point in self.points:
            a, b = max(start, point.start), min(end, point.start + point.duration)
            if b > a:
                found.append((a, b, point.value))
        return found


@dataclass(frozen=True, slots=True)
class RegionSignals:
    """A region's PUE, price and carbon over time, and where the figures come from."""

    name: str
    pue: float
    price: DailyCurve  # per kWh, in the farm's currency
    carbon: DailyCurve  # gCO2 per kWh of the grid
    forecast: Forecast = field(default_factory=Forecast)  # carbon, where it has a value
    source: str = ""

    def at(self, t: float) -> RegionFigures:
        forecast = self.forecast.at(t)
        carbon = forecast if forecast is not None else self.carbon.at(t)
        return RegionFigures(self.pue, self.price.at(t), carbon)

    def changes(self, start: float, end: float) -> list[float]:
        """The instants in ``(start, end]`` where the figures may change."""
        edges = set(self.price.changes(start, end)) | set(self.carbon.changes(start, end))
        return sorted(edges | set(self.forecast.changes(start, end)))

    @classmethod
    def flat(cls, name: str, figures: RegionFigures, source: str = "") -> RegionSignals:
        return cls(
            name,
            figures.pue,
            DailyCurve.flat(figures.price_per_kwh),
            DailyCurve.flat(figures.carbon_g_per_kwh),
            source=source,
        )


def mean_over(signals: RegionSignals, start: float, end: float) -> RegionFigures:
    """The region's figures averaged over ``[start, end)``: exact, by integrals of their
    steps (the forecast in place of the profile where it has a value)."""
    if end <= start:
        return signals.at(start)
    span = end - start
    price = signals.price.integral(start, end)
    carbon = signals.carbon.integral(start, end)
    for a, b, value in signals.forecast.overlaps(start, end):
        carbon += value * (b - a) - signals.carbon.integral(a, b)
    return RegionFigures(signals.pue, price / span, carbon / span)
