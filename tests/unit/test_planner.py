"""The planner's simulated farm: exact figures on small workloads, and the policies'
promises (greenest never dirtier than fastest on flat signals; waiting for a window
cheaper and no deadline missed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.energy import RegionFigures, bill_for
from scheduler.core.planner import Shot, SimRegion, compare, simulate
from scheduler.core.signals import HOUR, DailyCurve, RegionSignals
from scheduler.core.siting import FASTEST, Link, PlacementPolicy
from tests.unit.test_signals import at

HYDRO = RegionSignals.flat("guizhou-hydro", RegionFigures(1.2, 0.35, 24.0))
COAL = RegionSignals.flat("coal-hall", RegionFigures(1.5, 0.30, 800.0))


def test_frames_fill_every_slot_and_the_figures_add_up() -> None:
    shots = [Shot("sh010", frames=100, seconds_per_frame=10.0, joules_per_frame=3.6e6)]
    report = simulate(shots, [SimRegion(HYDRO, slots=10)], FASTEST, "fastest", at(1, 0))
    assert report.makespan_seconds == pytest.approx(100.0)
    assert report.utilisation == pytest.approx(1.0)
    one = bill_for(3.6e6, HYDRO.at(0))
    assert report.cost == pytest.approx(100 * one.cost)
    assert report.co2_grams == pytest.approx(100 * one.co2_grams)
    assert report.facility_kwh == pytest.approx(100 * 1.2)
    assert report.frames_by_region == {"guizhou-hydro": 100}
    assert report.busy[0] == (at(1, 0), 0) and max(b for _, b in report.busy) == 10


def test_shots_go_in_submission_order_and_a_late_one_waits_for_its_submission() -> None:
    shots = [
        Shot("a", frames=4, seconds_per_frame=10, joules_per_frame=1, submit_at=0),
        Shot("b", frames=4, seconds_per_frame=10, joules_per_frame=1, submit_at=100),
    ]
    report = simulate(shots, [SimRegion(HYDRO, slots=2)], FASTEST, "fastest", 0.0)
    assert report.makespan_seconds == pytest.approx(120.0)  # b from 100 s: two waves
    assert report.utilisation == pytest.approx(8 * 10 / (2 * 120))  # frame-seconds / slots


def test_greenest_keeps_frames_in_the_clean_region_while_it_has_room() -> None:
    shots = [Shot("sh010", frames=20, seconds_per_frame=60, joules_per_frame=1e6)]
    farm = [SimRegion(COAL, slots=10), SimRegion(HYDRO, slots=10)]
    fastest, greenest = compare(shots, farm, ["fastest", "greenest"], at(1, 0))
    assert greenest.frames_by_region == {"coal-hall": 10, "guizhou-hydro": 10}  # all needed
    assert greenest.co2_grams == pytest.approx(fastest.co2_grams)
    small = [Shot("sh020", frames=8, seconds_per_frame=60, joules_per_frame=1e6)]
    fastest, greenest = compare(small, farm, ["fastest", "greenest"], at(1, 0))
    assert greenest.frames_by_region["guizhou-hydro"] == 8
    assert greenest.co2_grams < fastest.co2_grams
    assert greenest.makespan_seconds == fastest.makespan_seconds


def test_cheapest_waits_for_the_valley_and_meets_its_deadline() -> None:
    tariffed = RegionSignals(
        "east", 1.4, DailyCurve(((0, 0.2), (8, 1.2), (22, 0.2))), DailyCurve.flat(500)
    )
    shots = [
        Shot("sh030", frames=40, seconds_per_frame=600, joules_per_frame=1e6, deadline=20 * HOUR)
    ]
    farm = [SimRegion(tariffed, slots=10)]
    fastest, cheapest = compare(shots, farm, ["fastest", "cheapest"], at(1, 9))
    assert cheapest.cost < fastest.cost * 0.3
    assert cheapest.deadlines_missed == fastest.deadlines_missed == 0
    assert cheapest.makespan_seconds > fastest.makespan_seconds


def test_a_deadline_no_policy_can_meet_is_counted_missed() -> None:
    shots = [Shot("sh040", frames=100, seconds_per_frame=60, joules_per_frame=1, deadline=60)]
    [report] = compare(shots, [SimRegion(HYDRO, slots=1)], ["greenest"], 0.0)
    assert report.deadlines_missed == 1


def test_a_far_region_waits_for_the_scene_and_pays_for_every_byte_moved() -> None:
    link = Link(bandwidth_mbps=80.0, latency_ms=10.0, price_per_gb=0.5)  # 10 MB/s
    shots = [
        Shot("sh050", frames=4, seconds_per_frame=10, joules_per_frame=1,
             scene_bytes=1e9, output_bytes=1e7),
    ]  # fmt: skip
    report = simulate(shots, [SimRegion(HYDRO, slots=2, link=link)], FASTEST, "fastest", 0.0)
    # two waves of 10 s, each frame 1 s plus the latency to send back, and the first
    # frame of the region (on one slot) 100 s more for the scene
    assert report.makespan_seconds == pytest.approx(100 + 2 * (10 + 1.01) + 0.01)
    assert report.moved_bytes == pytest.approx(1e9 + 4 * 1e7)
    assert report.transfer_cost == pytest.approx(1.04 * 0.5)
    assert report.total_cost == pytest.approx(report.cost + report.transfer_cost)
    near = simulate(shots, [SimRegion(HYDRO, slots=2)], FASTEST, "fastest", 0.0)
    assert near.transfer_cost == 0 and near.makespan_seconds == pytest.approx(20.0)


def test_cheapest_renders_a_heavy_scene_near_the_studio_when_moving_it_costs_more() -> None:
    far = Link(bandwidth_mbps=1000.0, latency_ms=15.0, price_per_gb=0.5)
    east = RegionSignals.flat("shanghai", RegionFigures(1.4, 0.9, 580.0))
    farm = [SimRegion(HYDRO, slots=10, link=far), SimRegion(east, slots=10)]
    light = [Shot("light", 10, 60, 3.6e6, scene_bytes=1e8)]  # 0.05 to move, 0.84 saved
    heavy = [Shot("heavy", 10, 60, 3.6e6, scene_bytes=5e10)]  # 25 to move
    [plan] = compare(light, farm, ["cheapest"], 0.0)
    assert plan.frames_by_region == {"guizhou-hydro": 10, "shanghai": 0}
    [plan] = compare(heavy, farm, ["cheapest"], 0.0)
    assert plan.frames_by_region == {"guizhou-hydro": 0, "shanghai": 10}
    assert plan.transfer_cost == 0


def test_a_farm_without_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="render slot"):
        simulate([], [SimRegion(HYDRO, slots=0)], FASTEST, "fastest", 0.0)


@settings(deadline=None, max_examples=40)
@given(
    frames=st.lists(st.integers(1, 50), min_size=1, max_size=5),
    clean_slots=st.integers(1, 8),
    dirty_slots=st.integers(1, 8),
)
def test_with_flat_signals_greenest_is_never_dirtier_than_fastest(
    frames: list[int], clean_slots: int, dirty_slots: int
) -> None:
    shots = [Shot(f"s{i}", n, 60.0, 1e6, submit_at=i * 30.0) for i, n in enumerate(frames)]
    farm = [SimRegion(COAL, slots=dirty_slots), SimRegion(HYDRO, slots=clean_slots)]
    fastest = simulate(shots, farm, FASTEST, "fastest", 0.0)
    greenest = simulate(shots, farm, PlacementPolicy.named("greenest"), "greenest", 0.0)
    assert greenest.co2_grams <= fastest.co2_grams * (1 + 1e-9)
    assert greenest.deadlines_missed == 0
