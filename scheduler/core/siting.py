"""Where and when a job's frames render for the least energy, money and carbon, within
its deadline: the placement policy of a job (``fastest``, ``cheapest``, ``greenest``, or
weights between them) turned into a preference of regions now, and a start time.

- **Where.** A frame rendered in a region costs its measured IT energy (joules per
  frame, the job's own where measured, else the farm's typical) times the region's PUE,
  times its price and its grid carbon *now*. ``rank_regions`` orders the regions by the
  policy's weighted score of those, each normalised by the best region's, so a yuan and
  a gram weigh alike; ``fastest`` has no preference (the emptiest node, as always).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
class FrameCost:
    """What one frame costs in a region at a time: money and grams of CO2."""

    cost: float
    co2_grams: float


def frame_cost(joules_per_frame: float, figures: RegionFigures) -> FrameCost:
    bill = bill_for(joules_per_frame, figures)
    return FrameCost(bill.cost, bill.co2_grams)


def _score(policy: PlacementPolicy, cost: FrameCost, best: FrameCost) -> float:
    """The policy's weighted cost, each part relative to the best found (1 = as good)."""
    return policy.cost * _relative(cost.cost, best.cost) + policy.carbon * _relative(
        cost.co2_grams, best.co2_grams
    )


def _relative(value: float, best: float) -> float:
    return value / best if best > 0 else (0.0 if value <= 0 else math.inf)


def rank_regions(
    policy: PlacementPolicy,
    joules_per_frame: Mapping[str, float],
    figures: Mapping[str, RegionFigures],
) -> list[str]:
    """The regions (of ``figures``) best first under the policy, by each region's
    marginal cost per frame now (its own measured energy per frame, else the mean of
    the measured ones); empty for a policy that weighs neither cost nor carbon."""
    if not policy.weighs_cost_or_carbon or not figures:
        return []
    known = [j for j in joules_per_frame.values() if j > 0]
    typical = sum(known) / len(known) if known else 1.0
    costs = {
        region: frame_cost(joules_per_frame.get(region) or typical, region_figures)
        for region, region_figures in figures.items()
    }
    best = FrameCost(min(c.cost for c in costs.values()), min(c.co2_grams for c in costs.values()))
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
) -> StartPlan:
    """The start within the deadline at which the run costs least under the policy."""
    if deadline is None:
        return StartPlan(now, None)
    latest = deadline - run_seconds(frames_left, frame_seconds, slots)
    if not policy.weighs_cost_or_carbon or not regions or latest <= now:
        return StartPlan(now, latest)
    duration = run_seconds(frames_left, frame_seconds, slots) - SAFETY_SECONDS
    candidates = sorted({now, *(t for r in regions for t in r.changes(now, latest))})
    costs = {start: _run_cost(regions, start, duration, joules_per_frame) for start in candidates}
    best = FrameCost(min(c.cost for c in costs.values()), min(c.co2_grams for c in costs.values()))
    scores = {start: _score(policy, costs[start], best) for start in candidates}
    chosen = min(candidates, key=lambda start: (scores[start], start))
    if chosen <= now or scores[chosen] >= scores[now] * (1 - GAIN):  # not worth a wait
        return StartPlan(now, latest)
    saving = _saving(policy, costs[now], costs[chosen])
    return StartPlan(chosen, latest, f"waits for a {saving} window")


def _run_cost(
    regions: Sequence[RegionSignals], start: float, duration: float, joules: float
) -> FrameCost:
    """A frame's cost over the run from ``start``: in the region best for it then."""
    means = [mean_over(region, start, start + max(duration, 1.0)) for region in regions]
    costs = [frame_cost(joules, figures) for figures in means]
    return FrameCost(min(c.cost for c in costs), min(c.co2_grams for c in costs))


def _saving(policy: PlacementPolicy, now: FrameCost, later: FrameCost) -> str:
    parts = []
    if policy.cost > 0 and now.cost > 0:
        parts.append(f"{1 - later.cost / now.cost:.0%} cheaper")
    if policy.carbon > 0 and now.co2_grams > 0:
        parts.append(f"{1 - later.co2_grams / now.co2_grams:.0%} cleaner")
    return " and ".join(parts) or "better"
