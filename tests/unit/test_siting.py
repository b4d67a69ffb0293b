"""Placement that weighs cost and carbon, as tables and properties: never a missed
deadline that was feasible; never costlier than ``fastest`` when signals are flat."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.energy import RegionFigures
from scheduler.core.signals import HOUR, DailyCurve, RegionSignals
from scheduler.core.siting import (
    FASTEST,
    NEAR,
    SAFETY_SECONDS,
    Link,
    PlacementPolicy,
    Traffic,
    frame_cost,
    plan_start,
    rank_regions,
    run_seconds,
)
from tests.unit.test_signals import TARIFF, at

HYDRO = RegionFigures(pue=1.2, price_per_kwh=0.35, carbon_g_per_kwh=24.0)
COAL = RegionFigures(pue=1.5, price_per_kwh=0.30, carbon_g_per_kwh=800.0)
EAST = RegionFigures(pue=1.4, price_per_kwh=0.9, carbon_g_per_kwh=536.6)
FIGURES = {"guizhou-hydro": HYDRO, "coal-hall": COAL, "shanghai": EAST}
JOULES = {"guizhou-hydro": 900.0, "coal-hall": 1000.0, "shanghai": 800.0}


@pytest.mark.parametrize(
    ("policy", "order"),
    [
        ("fastest", []),  # no preference: the emptiest node, as ever
        ("cheapest", ["guizhou-hydro", "coal-hall", "shanghai"]),
        ("greenest", ["guizhou-hydro", "shanghai", "coal-hall"]),
    ],
)
def test_regions_ranked_by_each_policy(policy: str, order: list[str]) -> None:
    assert rank_regions(PlacementPolicy.named(policy), JOULES, FIGURES) == order


def test_a_frames_cost_is_its_energy_times_pue_price_and_carbon() -> None:
    cost = frame_cost(3_600_000.0, HYDRO)  # 1 kWh of IT energy
    assert cost.cost == pytest.approx(1.2 * 0.35)
    assert cost.co2_grams == pytest.approx(1.2 * 24.0)


def test_unmeasured_regions_are_ranked_with_the_measured_mean() -> None:
    ranked = rank_regions(PlacementPolicy.named("cheapest"), {"coal-hall": 1000.0}, FIGURES)
    assert ranked[0] == "guizhou-hydro"


# Hangzhou to Guiyang over a leased line; the studio's own region is near.
WEST_LINK = Link(bandwidth_mbps=100.0, latency_ms=15.0, price_per_gb=0.5)
GB = 1e9


def test_a_link_prices_and_times_what_crosses_it() -> None:
    assert WEST_LINK.cost(2 * GB) == pytest.approx(1.0)
    assert WEST_LINK.seconds(1.25e7) == pytest.approx(0.015 + 1.0)  # 100 Mbit in 1 s
    assert NEAR.cost(GB) == 0 and NEAR.seconds(GB) == 0


@pytest.mark.parametrize(
    "bad", [{"bandwidth_mbps": 0}, {"latency_ms": -1}, {"price_per_gb": float("inf")}]
)
def test_a_link_that_cannot_be_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="link"):
        Link(**bad)


def test_a_frame_pays_its_share_of_the_scene_and_its_output_on_the_wire() -> None:
    traffic = Traffic({"guizhou-hydro": WEST_LINK}, scene_bytes=10 * GB, frames=100,
                      output_bytes=0.05 * GB)  # fmt: skip
    assert traffic.frame_bytes == pytest.approx(0.15 * GB)
    far = frame_cost(1e6, HYDRO, traffic.link("guizhou-hydro"), traffic.frame_bytes)
    assert far.cost == pytest.approx(frame_cost(1e6, HYDRO).cost + 0.075)
    assert traffic.lead_seconds(["shanghai", "guizhou-hydro"]) == pytest.approx(800.015)
    assert traffic.frame_seconds("shanghai") == 0


@pytest.mark.parametrize(
    ("scene_gb", "first"),
    [
        (0.0, "guizhou-hydro"),  # nothing to move: the cheap western power wins
        (50.0, "shanghai"),  # a heavy scene for few frames: render it near the studio
    ],
)
def test_moving_a_heavy_scene_far_can_cost_more_than_the_power_saves(
    scene_gb: float, first: str
) -> None:
    traffic = Traffic({"guizhou-hydro": WEST_LINK, "coal-hall": WEST_LINK},
                      scene_bytes=scene_gb * GB, frames=10)  # fmt: skip
    joules = dict.fromkeys(FIGURES, 3.6e6)  # 1 kWh a frame
    assert rank_regions(PlacementPolicy.named("cheapest"), joules, FIGURES, traffic)[0] == first


def test_a_policy_that_weighs_time_prefers_the_region_nearer_on_the_wire() -> None:
    traffic = Traffic({"guizhou-hydro": WEST_LINK}, output_bytes=0.5 * GB)  # 40 s back
    same = {"guizhou-hydro": HYDRO, "shanghai": HYDRO}
    policy = PlacementPolicy(time=1.0, cost=0.01)
    joules = dict.fromkeys(same, 1e6)
    assert rank_regions(policy, joules, same, traffic, frame_seconds=60.0)[0] == "shanghai"
    assert rank_regions(policy, joules, same, frame_seconds=60.0) == sorted(same)  # alike


def test_the_scene_transfer_comes_before_the_latest_start() -> None:
    now = at(1, 9)
    traffic = Traffic({"east": WEST_LINK}, scene_bytes=36 * GB, frames=100)  # 48 min
    plain = plan_start(
        PlacementPolicy.named("cheapest"), now, at(2, 9), 100, 60.0, 10, [tariffed()], 1e6
    )
    moved = plan_start(
        PlacementPolicy.named("cheapest"), now, at(2, 9), 100, 60.0, 10, [tariffed()], 1e6,
        traffic,
    )  # fmt: skip
    assert plain.latest is not None and moved.latest is not None
    lead = 36 * GB * 8 / 100e6 + 0.015  # the scene's trip, then each frame's reply's
    answers = run_seconds(100, 60.0 + 0.015, 10) - run_seconds(100, 60.0, 10)
    assert plain.latest - moved.latest == pytest.approx(lead + answers)


def test_a_window_cheap_only_in_a_small_hall_is_worth_what_fits_there() -> None:
    now = at(1, 9)
    small = tariffed("small-night-hall")  # 75% cheaper at night
    big = RegionSignals.flat("big-flat-hall", RegionFigures(1.4, 0.6, 536.6))
    cheapest = PlacementPolicy.named("cheapest")
    unbounded = plan_start(cheapest, now, at(2, 9), 100, 60.0, 101, [small, big], 1e6)
    assert unbounded.waits(now)  # as if the small hall could take every frame
    slots = {"small-night-hall": 1, "big-flat-hall": 100}
    bounded = plan_start(cheapest, now, at(2, 9), 100, 60.0, 101, [small, big], 1e6,
                         region_slots=slots)  # fmt: skip
    assert not bounded.waits(now)  # one frame of a hundred saves too little to wait
    roomy = {"small-night-hall": 100, "big-flat-hall": 1}
    assert plan_start(cheapest, now, at(2, 9), 100, 60.0, 101, [small, big], 1e6,
                      region_slots=roomy).waits(now)  # fmt: skip


@pytest.mark.parametrize("bad", [(0, 0, 0), (-1, 1, 0), (float("nan"), 1, 1), (1, float("inf"), 0)])
def test_weights_that_do_not_hold_are_refused(bad: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        PlacementPolicy(*bad)


figures = st.builds(
    RegionFigures,
    pue=st.floats(1.0, 3.0),
    price_per_kwh=st.floats(0.01, 5.0),
    carbon_g_per_kwh=st.floats(1.0, 1500.0),
)


@given(
    regions=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), figures, min_size=1),
    joules=st.floats(1.0, 1e7),
    cost=st.floats(0, 1),
    carbon=st.floats(0, 1),
)
def test_the_first_region_is_never_worse_than_any_fastest_could_pick(
    regions: dict[str, RegionFigures], joules: float, cost: float, carbon: float
) -> None:
    """With flat signals and the same energy per frame everywhere, the region a costing
    policy prefers costs no more (in its own weights) than any region ``fastest`` might
    put the frame in."""
    policy = PlacementPolicy(time=0.0, cost=cost + 0.01, carbon=carbon)
    ranked = rank_regions(policy, dict.fromkeys(regions, joules), regions)
    first = frame_cost(joules, regions[ranked[0]])
    for other in regions.values():
        costs = frame_cost(joules, other)
        assert policy.cost * first.cost + policy.carbon * first.co2_grams <= (
            policy.cost * costs.cost + policy.carbon * costs.co2_grams
        ) * (1 + 1e-9) or (policy.cost > 0 and policy.carbon > 0)


def tariffed(name: str = "east") -> RegionSignals:
    return RegionSignals(name, 1.4, TARIFF, DailyCurve.flat(536.6))


def test_work_with_room_before_its_deadline_waits_for_the_valley() -> None:
    now = at(1, 9)  # peak
    deadline = at(2, 9)
    plan = plan_start(
        PlacementPolicy.named("cheapest"), now, deadline, 100, 60.0, 10, [tariffed()], 1e6
    )
    assert plan.start == at(1, 23)  # the night's valley, not the flat hours from 11:00
    assert plan.waits(now) and plan.reason == "waits for a 75% cheaper window"
    assert plan.latest is not None and plan.start <= plan.latest


def test_a_long_run_waits_for_the_night_valley() -> None:
    now = at(1, 19)  # evening peak
    plan = plan_start(
        PlacementPolicy.named("cheapest"), now, at(2, 12), 60, 3600.0, 10, [tariffed()], 1e6
    )
    assert plan.start == at(1, 23)  # six hours from 23:00 are all valley but one
    assert "cheaper" in plan.reason


def test_fastest_and_jobs_without_a_deadline_start_now() -> None:
    now = at(1, 9)
    assert plan_start(FASTEST, now, at(2, 9), 100, 60, 10, [tariffed()], 1e6).start == now
    greenest = PlacementPolicy.named("cheapest")
    assert plan_start(greenest, now, None, 100, 60, 10, [tariffed()], 1e6).start == now


def test_a_job_that_can_no_longer_wait_starts_now() -> None:
    now = at(1, 9)
    tight = now + run_seconds(100, 60.0, 10)  # exactly the time it needs
    assert (
        plan_start(
            PlacementPolicy.named("cheapest"), now, tight, 100, 60.0, 10, [tariffed()], 1e6
        ).start
        == now
    )
    late = now + 60  # already too late: start at once, and say nothing of waiting
    plan = plan_start(
        PlacementPolicy.named("cheapest"), now, late, 100, 60.0, 10, [tariffed()], 1e6
    )
    assert plan.start == now and not plan.waits(now)


@settings(deadline=None)
@given(
    hour=st.floats(0, 48),
    frames=st.integers(0, 5000),
    frame_seconds=st.floats(0, 3600),
    slots=st.integers(1, 64),
    slack_hours=st.floats(-12, 72),
    cost=st.floats(0, 1),
    carbon=st.floats(0, 1),
    scene_gb=st.floats(0, 100),
)
def test_a_deadline_that_was_feasible_is_met(
    hour: float,
    frames: int,
    frame_seconds: float,
    slots: int,
    slack_hours: float,
    cost: float,
    carbon: float,
    scene_gb: float,
) -> None:
    """Whatever the policy, a job started when planned and run as measured ends by its
    deadline whenever it could have (started now); and it never waits past its latest
    start."""
    now = at(1, 0) + hour * HOUR
    policy = PlacementPolicy(time=0.1, cost=cost, carbon=carbon)
    profile = DailyCurve.hourly([800.0 - 30 * h for h in range(24)])
    regions = [tariffed(), RegionSignals("west", 1.2, DailyCurve.flat(0.5), profile)]
    # the scene's trip west and each frame's back (1 s) are part of what it needs
    traffic = Traffic({"west": WEST_LINK}, scene_bytes=scene_gb * GB, frames=max(1, frames),
                      output_bytes=1.25e7 - 1875)  # fmt: skip
    needed = traffic.lead_seconds(["west"]) + run_seconds(
        frames, frame_seconds + traffic.frame_seconds("west"), slots
    )
    deadline = now + needed + slack_hours * HOUR
    plan = plan_start(policy, now, deadline, frames, frame_seconds, slots, regions, 1e6, traffic)
    assert plan.start >= now
    if deadline - needed >= now:  # it could meet its deadline
        assert plan.start + needed <= deadline + 1e-6
    else:
        assert plan.start == now


@given(hour=st.floats(0, 48), slack_hours=st.floats(0, 72), cost=st.floats(0, 1))
def test_with_flat_signals_nothing_waits(hour: float, slack_hours: float, cost: float) -> None:
    now = at(1, 0) + hour * HOUR
    flat = RegionSignals.flat("west", HYDRO)
    deadline = now + run_seconds(100, 60, 4) + slack_hours * HOUR
    policy = PlacementPolicy(time=0, cost=cost + 0.01, carbon=1 - cost)
    assert plan_start(policy, now, deadline, 100, 60, 4, [flat], 1e6).start == now


def test_the_safety_margin_is_in_the_latest_start() -> None:
    assert run_seconds(0, 60, 4) == SAFETY_SECONDS
    assert run_seconds(8, 60, 4) == 2 * 60 * 1.25 + SAFETY_SECONDS


def test_placement_prefers_the_regions_ranked_first_then_any() -> None:
    from scheduler.core.placement import NodeView, Placement, Requirements, Room

    nodes = [
        NodeView("east-1", "cpu", free=5, region="shanghai"),
        NodeView("west-1", "cpu", free=1, region="guizhou-hydro"),
    ]
    placement = Placement(Room.of(nodes))
    prefer = ("guizhou-hydro", "shanghai")
    assert placement.place("cpu", Requirements(), prefer=prefer) == "west-1"
    assert placement.place("cpu", Requirements(), prefer=prefer) == "east-1"  # west is full
    fastest = Placement(Room.of(nodes))
    assert fastest.place("cpu", Requirements()) == "east-1"  # the emptiest
