"""Energy maths: attribution conserves the node's energy, counters wrap, bills add up."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.core.energy import (
    RegionFigures,
    attribute_interval,
    bill_for,
    counter_delta,
    model_watts,
    split_evenly,
)

finite = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)


@given(
    joules=finite,
    seconds=st.floats(min_value=0, max_value=3600),
    idle_watts=st.floats(min_value=0, max_value=2000),
    slots=st.integers(min_value=1, max_value=128),
    cpu=st.dictionaries(st.integers(0, 1000), finite, max_size=40),
)
def test_attribution_conserves_the_nodes_energy(
    joules: float, seconds: float, idle_watts: float, slots: int, cpu: dict[int, float]
) -> None:
    result = attribute_interval(joules, seconds, idle_watts, slots, cpu)
    assert set(result.shares) == set(cpu)
    assert all(share >= 0 for share in result.shares.values())
    assert result.unattributed >= 0
    total = sum(result.shares.values()) + result.unattributed
    assert math.isclose(total, joules, rel_tol=1e-9, abs_tol=1e-6)


@given(
    seconds=st.lists(st.floats(min_value=0.01, max_value=10), min_size=1, max_size=30),
    joules=st.lists(finite, min_size=30, max_size=30),
    cpu=st.lists(
        st.dictionaries(st.sampled_from("abcd"), st.floats(0, 40), max_size=4),
        min_size=30,
        max_size=30,
    ),
)
def test_attempts_over_many_intervals_add_up_to_the_meter(
    seconds: list[float], joules: list[float], cpu: list[dict[str, float]]
) -> None:
    """A node's run, interval after interval: per-attempt totals + idle = the meter's total."""
    carried: dict[str, float] = {}
    idle = 0.0
    for dt, spent, used in zip(seconds, joules, cpu, strict=False):
        result = attribute_interval(spent, dt, 100.0, 4, used)
        for key, share in result.shares.items():
            carried[key] = carried.get(key, 0.0) + share
        idle += result.unattributed
    metered = sum(joules[: len(seconds)])
    assert math.isclose(sum(carried.values()) + idle, metered, rel_tol=1e-9, abs_tol=1e-6)


@pytest.mark.parametrize(
    ("joules", "seconds", "idle_watts", "slots", "cpu", "shares", "unattributed"),
    [
        # Two of four slots busy, 1 s, 100 W idle: each attempt carries 25 J of idle,
        # the other 50 J of idle stay the node's; 300 J above idle go 2:1 by CPU time.
        (400.0, 1.0, 100.0, 4, {"a": 2.0, "b": 1.0}, {"a": 225.0, "b": 125.0}, 50.0),
        # No CPU time used: the energy above idle is shared evenly.
        (200.0, 1.0, 100.0, 2, {"a": 0.0, "b": 0.0}, {"a": 100.0, "b": 100.0}, 0.0),
        # The meter read less than the model's idle: idle is capped, nothing goes negative.
        (40.0, 1.0, 100.0, 4, {"a": 1.0}, {"a": 10.0}, 30.0),
        # Nothing running: all of it is the node's.
        (150.0, 1.0, 100.0, 4, {}, {}, 150.0),
        # More attempts than declared slots (a misconfigured node): nobody is lost.
        (90.0, 1.0, 30.0, 1, dict.fromkeys("abc", 1.0), dict.fromkeys("abc", 30.0), 0.0),
    ],
)
def test_attribution_table(
    joules: float,
    seconds: float,
    idle_watts: float,
    slots: int,
    cpu: dict[str, float],
    shares: dict[str, float],
    unattributed: float,
) -> None:
    result = attribute_interval(joules, seconds, idle_watts, slots, cpu)
    assert result.shares == pytest.approx(shares)
    assert result.unattributed == pytest.approx(unattributed)


@pytest.mark.parametrize(
    ("before", "after", "wraps_at", "moved"),
    [
        (100, 250, 1000, 150),
        (900, 100, 1000, 200),  # wrapped once
        (0, 0, 1000, 0),
        (262_143_328_850, 1_000_000, 262_143_328_850, 1_000_000),  # a real RAPL range
    ],
)
def test_counter_delta(before: int, after: int, wraps_at: int, moved: int) -> None:
    assert counter_delta(before, after, wraps_at) == moved


@pytest.mark.parametrize(
    ("utilisation", "watts"), [(0.0, 50.0), (0.5, 125.0), (1.0, 200.0), (-1, 50.0), (3, 200.0)]
)
def test_power_model(utilisation: float, watts: float) -> None:
    assert model_watts(50.0, 200.0, utilisation) == pytest.approx(watts)


def test_a_bill_follows_pue_price_and_carbon() -> None:
    # 1 kWh of IT energy in a PUE 1.2 hall: 1.2 kWh from the grid.
    bill = bill_for(3_600_000.0, RegionFigures(pue=1.2, price_per_kwh=0.5, carbon_g_per_kwh=537))
    assert bill.facility_joules == pytest.approx(4_320_000.0)
    assert bill.cost == pytest.approx(0.6)
    assert bill.co2_grams == pytest.approx(644.4)


@given(total=finite, parts=st.integers(1, 50))
def test_split_evenly_adds_up_exactly(total: float, parts: int) -> None:
    shares = split_evenly(total, parts)
    assert len(shares) == parts
    assert math.isclose(sum(shares), total, rel_tol=1e-12, abs_tol=1e-9)
