"""Where and when a job's frames render for the least energy, money and carbon, within
its deadline: the placement policy of a job (``fastest``, ``cheapest``, ``greenest``, or
weights between them) turned into a preference of regions now, and a start time.

- **Where.** A frame rendered in a region costs its measured IT energy (joules per
  frame, the job's own where measured, else the farm's typical) times the region's PUE,
  times its price and its grid carbon *now*. ``rank_regions`` orders the regions by the
  policy's weighted score of those, each normalised by the best region's, so a yuan and
  a gram weigh alike; ``fastest`` has no preference (the emptiest node, as always).
- **Moving the data.** A region far from the studio costs more than its energy: the
  job's scene goes there (once per region, shared by the job's frames) and each frame
  comes back, over a ``Link`` (bandwidth, latency, a price per GB). A frame's cost in
  a region adds its share of that traffic's price; a policy that weighs time adds its
  seconds on the wire; the latest start counts the scene's transfer. A region with no
  link configured is treated as near (nothing modelled), as the farm did before links.
- **When.** Work whose deadline allows may wait for a cheaper or cleaner window (a
  valley tariff, night hydro). ``plan_start`` looks at starting now and at every change
  of the regions' signals up to the latest start that still meets the deadline, given
  the pool's slots and the job's measured frame time (with a safety margin), and picks
  the start whose run costs least under the policy; ties go to the earliest. It never
  picks a start after the latest one, so a job that can meet its deadline does; one that
  cannot any more starts now.

Pure: functions of the signals, the measurements and ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.energy import RegionFigures, bill_for
from scheduler.core.signals import RegionSignals, mean_over

SAFETY = 1.25  # a waiting job's run is planned this much longer than measured
SAFETY_SECONDS = 300.0  # and this long besides (dispatch, a retry)
GAIN = 0.01  # a wait must save at least this share of the policy's cost


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """Weights of time, cost and carbon; ``fastest`` is time alone."""

    time: float = 1.0
    cost: float = 0.0
    carbon: float = 0.0

    def __post_init__(self) -> None:
        weights = (self.time, self.cost, self.carbon)
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("placement weights are finite, not negative, and not all 0")

    @property
    def weighs_cost_or_carbon(self) -> bool:
        return self.cost > 0 or self.carbon > 0

    @classmethod
    def named(cls, name: str) -> PlacementPolicy:
        return POLICIES[name]


FASTEST = PlacementPolicy()
POLICIES = {
    "fastest": FASTEST,
    "cheapest": PlacementPolicy(time=0.0, cost=1.0),
    "greenest": PlacementPolicy(time=0.0, carbon=1.0),
}


@dataclass(frozen=True, slots=True)
class Link:
    """The network between a studio's region and a render region."""

    bandwidth_mbps: float = math.inf  # megabits per second
    latency_ms: float = 0.0  # one way
    price_per_gb: float = 0.0  # in the farm's currency, per 10^9 bytes moved

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps > 0:
            raise ValueError(f"a link's bandwidth is positive, not {self.bandwidth_mbps}")
        for name in ("latency_ms", "price_per_gb"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"a link's {name} is finite and not negative")

    def seconds(self, nbytes: float) -> float:
        """How long ``nbytes`` take to arrive."""
        return self.latency_ms / 1000 + max(0.0, nbytes) * 8 / (self.bandwidth_mbps * 1e6)

    def cost(self, nbytes: float) -> float:
        return max(0.0, nbytes) / 1e9 * self.price_per_gb


NEAR = Link()  # the studio's own region, or a link nobody configured


@dataclass(frozen=True, slots=True)
class Traffic:
    """What a job moves between the studio and a region: its scene there (once per
    region, shared by its frames) and each frame's output back; over which links."""

    links: Mapping[str, Link] = field(default_factory=dict)  # by render region
    scene_bytes: float = 0.0
    frames: int = 1  # the frames that share the scene's trip
    output_bytes: float = 0.0  # per frame

    def link(self, region: str) -> Link:
        return self.links.get(region, NEAR)

    @property
    def frame_bytes(self) -> float:
        return self.scene_bytes / max(1, self.frames) + self.output_bytes

    def frame_seconds(self, region: str) -> float:
        """A frame's time on the wire: its output back (its scene share arrives before)."""
        return self.link(region).seconds(self.output_bytes)

    def lead_seconds(self, regions: Iterable[str]) -> float:
        """The longest the scene takes to reach any of the regions."""
        return max((self.link(r).seconds(self.scene_bytes) for r in regions), default=0.0)


STAYS = Traffic()  # nothing modelled: no links, or a studio with no home region


@dataclass(frozen=True, slots=True)
class FrameCost:
    """What one frame costs in a region at a time: money (energy and moving its data),
    grams of CO2, and seconds (rendering and on the wire)."""

    cost: float
    co2_grams: float
    seconds: float = 0.0


def frame_cost(
    joules_per_frame: float,
    figures: RegionFigures,
    link: Link = NEAR,
    frame_bytes: float = 0.0,
    seconds: float = 0.0,
) -> FrameCost:
    """A frame's energy bill in a region, plus the price of moving its ``frame_bytes``
    over ``link``; ``seconds`` of rendering plus its time on the wire."""
    bill = bill_for(joules_per_frame, figures)
    moved = seconds + link.seconds(frame_bytes)
    return FrameCost(bill.cost + link.cost(frame_bytes), bill.co2_grams, moved)


def _score(policy: PlacementPolicy, cost: FrameCost, best: FrameCost) -> float:
    """The policy's weighted cost, each part relative to the best found (1 = as good)."""
    parts = (
        (policy.time, cost.seconds, best.seconds),
        (policy.cost, cost.cost, best.cost),
        (policy.carbon, cost.co2_grams, best.co2_grams),
    )  # a part of weight 0 counts for nothing, even where it is infinitely worse
    return sum(weight * _relative(value, least) for weight, value, least in parts if weight)


def _best(costs: Iterable[FrameCost]) -> FrameCost:
    found = list(costs)
    return FrameCost(
        min(c.cost for c in found), min(c.co2_grams for c in found), min(c.seconds for c in found)
    )


def _relative(value: float, best: float) -> float:
    return value / best if best > 0 else (0.0 if value <= 0 else math.inf)


def rank_regions(
    policy: PlacementPolicy,
    joules_per_frame: Mapping[str, float],
    figures: Mapping[str, RegionFigures],
    traffic: Traffic = STAYS,
    frame_seconds: float = 0.0,
) -> list[str]:
    """The regions (of ``figures``) best first under the policy, by each region's
    marginal cost per frame now (its own measured energy per frame, else the mean of
    the measured ones, plus moving the frame's share of the ``traffic``); empty for a
    policy that weighs neither cost nor carbon."""
    if not policy.weighs_cost_or_carbon or not figures:
        return []
    known = [j for j in joules_per_frame.values() if j > 0]
    typical = sum(known) / len(known) if known else 1.0
    costs = {
        region: frame_cost(
            joules_per_frame.get(region) or typical,
            region_figures,
            traffic.link(region),
            traffic.frame_bytes,
            frame_seconds,
        )
        for region, region_figures in figures.items()
    }
    best = _best(costs.values())
    return sorted(costs, key=lambda region: (_score(policy, costs[region], best), region))


@dataclass(frozen=True, slots=True)
class StartPlan:
    """When a job should start: ``start`` (``now`` to go at once), the latest start that
    meets its deadline (None without one), and why, for the job's message."""

    start: float
    latest: float | None
    reason: str = ""

    def waits(self, now: float) -> bool:
        return self.start > now


def run_seconds(frames_left: int, frame_seconds: float, slots: int) -> float:
    """How long the job's remaining frames take on ``slots`` slots, planned with margin."""
    waves = math.ceil(max(0, frames_left) / max(1, slots))
    return waves * max(0.0, frame_seconds) * SAFETY + SAFETY_SECONDS


def plan_start(
    policy: PlacementPolicy,
    now: float,
    deadline: float | None,
    frames_left: int,
    frame_seconds: float,
    slots: int,
    regions: Sequence[RegionSignals],
    joules_per_frame: float,
    traffic: Traffic = STAYS,
    region_slots: Mapping[str, int] | None = None,
) -> StartPlan:
    """The start within the deadline at which the run costs least under the policy.
    The scene's transfer to the farthest region comes before the run, and each frame's
    trip back is part of its time. A run's cost is its frames filling the regions best
    first, each up to its ``region_slots`` for the run's length (unbounded where not
    given): a window that is cheap only in a small hall is worth only what fits there."""
    if deadline is None:
        return StartPlan(now, None)
    names = [r.name for r in regions]
    frame_seconds += max((traffic.frame_seconds(r) for r in names), default=0.0)
    run = run_seconds(frames_left, frame_seconds, slots) + traffic.lead_seconds(names)
    latest = deadline - run
    if not policy.weighs_cost_or_carbon or not regions or latest <= now:
        return StartPlan(now, latest)
    duration = run - SAFETY_SECONDS
    candidates = sorted({now, *(t for r in regions for t in r.changes(now, latest))})
    waves = math.ceil(max(1, frames_left) / max(1, slots))
    room = {
        r.name: region_slots[r.name] * waves if region_slots and r.name in region_slots else None
        for r in regions
    }
    costs = {
        start: _run_cost(
            policy, regions, start, duration, joules_per_frame, traffic, max(1, frames_left), room
        )
        for start in candidates
    }
    best = _best(costs.values())
    scores = {start: _score(policy, costs[start], best) for start in candidates}
    chosen = min(candidates, key=lambda start: (scores[start], start))
    if chosen <= now or scores[chosen] >= scores[now] * (1 - GAIN):  # not worth a wait
        return StartPlan(now, latest)
    saving = _saving(policy, costs[now], costs[chosen])
    return StartPlan(chosen, latest, f"waits for a {saving} window")


def _run_cost(
    policy: PlacementPolicy,
    regions: Sequence[RegionSignals],
    start: float,
    duration: float,
    joules: float,
    traffic: Traffic,
    frames: int,
    room: Mapping[str, int | None],
) -> FrameCost:
    """A frame's mean cost over the run from ``start``: the frames go to the regions
    best first under the policy, each taking what it has room for (its time is the
    same at any start, so it is left out)."""
    costs = {
        region.name: frame_cost(
            joules,
            mean_over(region, start, start + max(duration, 1.0)),
            traffic.link(region.name),
            traffic.frame_bytes,
        )
        for region in regions
    }
    best = _best(costs.values())
    ranked = sorted(costs, key=lambda n: (_score(policy, costs[n], best), n))
    left, cost, co2 = frames, 0.0, 0.0
    for index, name in enumerate(ranked):
        space = room.get(name)
        last = index == len(ranked) - 1  # takes what is left, room or not
        taken = left if space is None or last else min(left, space)
        cost += taken * costs[name].cost
        co2 += taken * costs[name].co2_grams
        left -= taken
        if left <= 0:
            break
    return FrameCost(cost / frames, co2 / frames)


def _saving(policy: PlacementPolicy, now: FrameCost, later: FrameCost) -> str:
    parts = []
    if policy.cost > 0 and now.cost > 0:
        parts.append(f"{1 - later.cost / now.cost:.0%} cheaper")
    if policy.carbon > 0 and now.co2_grams > 0:
        parts.append(f"{1 - later.co2_grams / now.co2_grams:.0%} cleaner")
    return " and ".join(parts) or "better"
