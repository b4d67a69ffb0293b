"""A region's price and carbon over the day: tariffs, hourly profiles, forecasts."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.energy import RegionFigures
from scheduler.core.signals import (
    HOUR,
    DailyCurve,
    Forecast,
    ForecastPoint,
    RegionSignals,
    local_hour,
    mean_over,
)

CST = dt.timezone(dt.timedelta(hours=8))


def at(day: int, hour: float) -> float:
    """An instant in China Standard Time: 2026-12-`day` at `hour` o'clock."""
    return dt.datetime(2026, 12, day, tzinfo=CST).timestamp() + hour * HOUR


# Peak 1.0 from 8 to 11 and 18 to 22, valley 0.25 from 23 to 7, flat 0.6 between.
TARIFF = DailyCurve(((0, 0.25), (7, 0.6), (8, 1.0), (11, 0.6), (18, 1.0), (22, 0.6), (23, 0.25)))


@pytest.mark.parametrize(
    ("hour", "price"),
    [
        (0, 0.25),
        (6.99, 0.25),
        (7, 0.6),
        (9.5, 1.0),
        (11, 0.6),
        (19, 1.0),
        (22.5, 0.6),
        (23.5, 0.25),
    ],
)
def test_a_time_of_use_tariff_prices_each_local_hour(hour: float, price: float) -> None:
    assert TARIFF.at(at(1, hour)) == price


def test_hours_are_the_regions_own() -> None:
    assert local_hour(at(1, 3), 8.0) == pytest.approx(3)
    utc = DailyCurve(((0, 1.0), (12, 2.0)), utc_offset_hours=0)
    assert utc.at(at(1, 19)) == 1.0  # 19:00 in Guizhou is 11:00 UTC


@pytest.mark.parametrize(
    "steps",
    [
        (),
        ((1, 1.0),),
        ((0, 1.0), (0, 2.0)),
        ((0, 1.0), (24, 2.0)),
        ((0, -1.0),),
        ((0, float("nan")),),
    ],
)
def test_a_curve_that_does_not_hold_is_refused(steps: tuple[tuple[float, float], ...]) -> None:
    with pytest.raises(ValueError, match="daily curve"):
        DailyCurve(steps)


def test_a_forecast_overrides_the_profile_where_it_has_a_value() -> None:
    profile = DailyCurve.hourly([500.0] * 12 + [300.0] * 12)
    forecast = Forecast((ForecastPoint(at(1, 2), 2 * HOUR, 120.0),))
    region = RegionSignals("guizhou", 1.2, DailyCurve.flat(0.4), profile, forecast)
    assert region.at(at(1, 1)) == RegionFigures(1.2, 0.4, 500.0)
    assert region.at(at(1, 3)) == RegionFigures(1.2, 0.4, 120.0)
    assert region.at(at(1, 4)) == RegionFigures(1.2, 0.4, 500.0)  # the forecast ran out
    assert region.at(at(1, 13)).carbon_g_per_kwh == 300.0


def test_a_forecast_replaces_the_profile_in_the_mean_where_it_has_values() -> None:
    profile = DailyCurve.flat(500.0)
    forecast = Forecast((ForecastPoint(at(1, 1), HOUR, 100.0),))
    region = RegionSignals("g", 1.0, DailyCurve.flat(0.4), profile, forecast)
    assert mean_over(region, at(1, 0), at(1, 2)).carbon_g_per_kwh == pytest.approx(300.0)


def test_a_curves_integral_over_months_is_whole_days_and_the_rest() -> None:
    day = TARIFF.integral(at(1, 0), at(2, 0))
    assert day == pytest.approx((8 * 0.25 + 9 * 0.6 + 7 * 1.0) * HOUR)
    assert TARIFF.integral(at(1, 0), at(1, 0) + 90 * 24 * HOUR + 9 * HOUR) == pytest.approx(
        90 * day + (7 * 0.25 + 0.6 + 1.0) * HOUR
    )


def test_the_mean_over_a_window_is_exact_across_steps() -> None:
    region = RegionSignals("east", 1.5, TARIFF, DailyCurve.flat(536.6))
    mean = mean_over(region, at(1, 22), at(2, 0))  # an hour at 0.6, an hour at 0.25
    assert mean.price_per_kwh == pytest.approx(0.425)
    assert mean.carbon_g_per_kwh == pytest.approx(536.6)
    assert mean_over(region, at(1, 9), at(1, 9)) == region.at(at(1, 9))


@given(
    start=st.floats(0, 3 * 24, allow_nan=False),
    hours=st.floats(0.01, 48, allow_nan=False),
)
def test_the_mean_lies_between_the_cheapest_and_dearest_hour(start: float, hours: float) -> None:
    region = RegionSignals("east", 1.5, TARIFF, DailyCurve.flat(1.0))
    begin = at(1, 0) + start * HOUR
    mean = mean_over(region, begin, begin + hours * HOUR).price_per_kwh
    assert 0.25 - 1e-9 <= mean <= 1.0 + 1e-9
    # and it agrees with a fine numerical integral
    steps = 2000
    width = hours * HOUR / steps
    sampled = sum(region.at(begin + (i + 0.5) * width).price_per_kwh for i in range(steps)) / steps
    assert mean == pytest.approx(sampled, abs=0.75 / steps * 4 + 1e-9)
