"""Plan a film before rendering it: the farm simulated on a clock of its own (discrete
events, no sleeping), with the same placement decisions as the real scheduler
(``scheduler.core.siting``: regions ranked by a frame's cost or carbon, starts shifted
to cheaper or cleaner windows within deadlines), so that policies can be compared side
by side on a workload before a frame is rendered.

A workload is shots (a job each): frames, seconds and IT joules per frame, when the
shot is submitted and its deadline, and what it moves (its scene, each frame's output).
A farm is regions, each with its signals (PUE, tariff, carbon), its render slots and
its link to the studio (near where none is given): a shot's first frame in a region
waits for its scene there, every frame's slot is held while its output goes back, and
both are paid for by the GB. Shots are served in submission order (the
farm's order for one studio at one priority), each frame on a free slot of the best
region for its policy, or of any region for ``fastest``; a shot whose plan says wait
waits until its start. The report per policy: makespan, utilisation, facility kWh,
cost, gCO2, deadlines missed, and the busy slots and carbon over time (for a chart).

Pure: the simulation is a function of its inputs; frames of 150,000 simulate in
seconds (one heap event per frame).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.core.energy import JOULES_PER_KWH, bill_for
from scheduler.core.signals import RegionSignals
from scheduler.core.siting import (
    NEAR,
    STAYS,
    Link,
    PlacementPolicy,
    Traffic,
    plan_start,
    rank_regions,
)


@dataclass(frozen=True, slots=True)
class Shot:
    name: str
    frames: int
    seconds_per_frame: float
    joules_per_frame: float
    submit_at: float = 0.0  # seconds after the plan's start
    deadline: float | None = None  # seconds after the plan's start
    scene_bytes: float = 0.0  # what each region it renders in needs first
    output_bytes: float = 0.0  # each frame's, back to the studio


@dataclass(frozen=True, slots=True)
class SimRegion:
    signals: RegionSignals
    slots: int  # render slots in all (nodes x slots each)
    link: Link = NEAR  # to the studio


@dataclass(frozen=True, slots=True)
class PlanReport:
    policy: str
    frames: int
    makespan_seconds: float
    utilisation: float  # busy slot-seconds / (slots x makespan)
    facility_kwh: float
    cost: float
    co2_grams: float
    deadlines_missed: int
    frames_by_region: dict[str, int]
    moved_bytes: float = 0.0  # over the links: scenes to far regions, frames back
    transfer_cost: float = 0.0  # of moving them (``cost`` is the energy's)
    # (time, busy slots) at each change, and (time, mean grid carbon of the busy slots)
    busy: list[tuple[float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "frames": self.frames,
            "makespan_seconds": self.makespan_seconds,
            "utilisation": self.utilisation,
            "facility_kwh": self.facility_kwh,
            "cost": self.cost,
            "co2_grams": self.co2_grams,
            "deadlines_missed": self.deadlines_missed,
            "frames_by_region": dict(self.frames_by_region),
            "moved_bytes": self.moved_bytes,
            "transfer_cost": self.transfer_cost,
        }

    @property
    def total_cost(self) -> float:
        return self.cost + self.transfer_cost


@dataclass(slots=True)
class _ShotState:
    shot: Shot
    index: int
    left: int  # frames not yet started
    running: int = 0
    ready_at: float = 0.0  # when it may start (its submission, or its planned window)
    finished_at: float = 0.0
    traffic: Traffic = STAYS
    scene_at: dict[str, float] = field(default_factory=dict)  # its arrival, by region


def simulate(
    shots: Sequence[Shot],
    regions: Sequence[SimRegion],
    policy: PlacementPolicy,
    policy_name: str,
    start: float,
    overhead: float = 0.0,
) -> PlanReport:
    """Render the shots on the regions' slots under ``policy``, from ``start`` (an
    instant: the signals' clock), and report. ``overhead``: seconds a slot is held per
    frame beyond its render (the farm's dispatch and event round trip: about a
    scheduler tick), so the makespan is the farm's, the utilisation the renders'."""
    if not regions or sum(r.slots for r in regions) <= 0:
        raise ValueError("a farm to plan on has at least one render slot")
    free = {r.signals.name: r.slots for r in regions}
    signals = {r.signals.name: r.signals for r in regions}
    links = {r.signals.name: r.link for r in regions if r.link != NEAR}
    total_slots = sum(free.values())
    states = [
        _ShotState(shot, i, shot.frames, traffic=_traffic(shot, links))
        for i, shot in enumerate(shots)
    ]
    waiting: deque[_ShotState] = deque()  # submitted, in submission order
    events: list[tuple[float, int, int, str]] = []  # (time, kind, shot index, region)
    for index, state in enumerate(states):
        heapq.heappush(events, (start + state.shot.submit_at, SUBMIT, index, ""))
    busy_now = 0
    busy: list[tuple[float, int]] = [(start, 0)]
    frames_by_region = dict.fromkeys(free, 0)
    facility = cost = co2 = busy_seconds = moved = transfer_cost = 0.0
    clock = start
    while events:
        clock, kind, index, region = heapq.heappop(events)
        state = states[index]
        if kind == SUBMIT:
            _plan(state, clock, policy, regions, total_slots, start)
            waiting.append(state)
            if state.ready_at > clock:
                heapq.heappush(events, (state.ready_at, WAKE, index, ""))
        elif kind == DONE:
            free[region] += 1
            busy_now -= 1
            state.running -= 1
            if state.left == 0 and state.running == 0:
                state.finished_at = clock
        # give every free slot a frame, shots in submission order
        for candidate in list(waiting):
            if busy_now >= total_slots:
                break
            if candidate.ready_at > clock:
                continue
            order = _regions_for(candidate, policy, signals, clock)
            while candidate.left > 0:
                where = next((r for r in order if free[r] > 0), None)
                if where is None:
                    break
                free[where] -= 1
                busy_now += 1
                candidate.left -= 1
                candidate.running += 1
                seconds = candidate.shot.seconds_per_frame
                link = candidate.traffic.link(where)
                scene = candidate.shot.scene_bytes
                far = link != NEAR
                if where not in candidate.scene_at:  # the region's first frame sends it
                    candidate.scene_at[where] = clock + (link.seconds(scene) if scene else 0)
                    moved += scene if far else 0.0
                    transfer_cost += link.cost(scene)
                output = candidate.shot.output_bytes  # back, after the render
                moved += output if far else 0.0
                transfer_cost += link.cost(output)
                began = max(clock, candidate.scene_at[where])  # with the scene there
                end = began + seconds + (link.seconds(output) if output else 0.0) + overhead
                bill = bill_for(candidate.shot.joules_per_frame, signals[where].at(end))
                facility += bill.facility_joules
                cost += bill.cost
                co2 += bill.co2_grams
                busy_seconds += seconds
                frames_by_region[where] += 1
                heapq.heappush(events, (end, DONE, candidate.index, where))
            if candidate.left == 0:
                waiting.remove(candidate)
        if busy[-1][1] != busy_now:
            busy.append((clock, busy_now))
    makespan = max((s.finished_at for s in states), default=start) - start
    missed = sum(
        1
        for s in states
        if s.shot.deadline is not None and s.finished_at - start > s.shot.deadline + 1e-6
    )
    return PlanReport(
        policy=policy_name,
        frames=sum(s.shot.frames for s in states),
        makespan_seconds=makespan,
        utilisation=busy_seconds / (total_slots * makespan) if makespan > 0 else 0.0,
        facility_kwh=facility / JOULES_PER_KWH,
        cost=cost,
        co2_grams=co2,
        deadlines_missed=missed,
        frames_by_region=frames_by_region,
        moved_bytes=moved,
        transfer_cost=transfer_cost,
        busy=busy,
    )


SUBMIT, DONE, WAKE = 0, 1, 2  # event kinds, in their order at one instant


def _plan(
    state: _ShotState,
    now: float,
    policy: PlacementPolicy,
    regions: Sequence[SimRegion],
    slots: int,
    start: float,
) -> None:
    """When the shot may start: at once, or in its policy's window (as plan_start)."""
    shot = state.shot
    deadline = start + shot.deadline if shot.deadline is not None else None
    plan = plan_start(
        policy, now, deadline, shot.frames, shot.seconds_per_frame, slots,
        [r.signals for r in regions], shot.joules_per_frame, state.traffic,
        {r.signals.name: r.slots for r in regions},
    )  # fmt: skip
    state.ready_at = plan.start


def _traffic(shot: Shot, links: dict[str, Link]) -> Traffic:
    if not links or not (shot.scene_bytes or shot.output_bytes):
        return STAYS
    return Traffic(links, shot.scene_bytes, shot.frames, shot.output_bytes)


def _regions_for(
    state: _ShotState, policy: PlacementPolicy, signals: dict[str, RegionSignals], now: float
) -> list[str]:
    """The regions a frame of the shot may go to now, best first (all, for fastest)."""
    shot = state.shot
    ranked = rank_regions(
        policy,
        dict.fromkeys(signals, shot.joules_per_frame),
        {name: s.at(now) for name, s in signals.items()},
        state.traffic,
        shot.seconds_per_frame,
    )
    return ranked or sorted(signals)


def compare(
    shots: Sequence[Shot],
    regions: Sequence[SimRegion],
    policies: Sequence[str],
    start: float,
    overhead: float = 0.0,
) -> list[PlanReport]:
    """The workload simulated once per named policy, side by side."""
    return [
        simulate(shots, regions, PlacementPolicy.named(n), n, start, overhead) for n in policies
    ]


def carbon_over_time(
    regions: Sequence[SimRegion], start: float, end: float, step: float = 900.0
) -> list[tuple[float, dict[str, float]]]:
    """Each region's grid carbon every ``step`` seconds over ``[start, end]``, for a chart."""
    points = max(2, math.ceil((end - start) / step) + 1)
    return [
        (t, {r.signals.name: r.signals.at(t).carbon_g_per_kwh for r in regions})
        for t in (start + i * step for i in range(points))
    ]
