"""Energy maths: meter counters, the node power model, sharing a node's energy among the
frames it renders, and turning a frame's IT energy into a bill. Pure: no I/O, no clock.

Attribution, over one sampling interval of ``seconds`` in which the node's meter moved
by ``joules``:

- the node's idle power is a floor paid by every render slot, used or not: each running
  attempt carries ``idle_watts / slots x seconds`` (the idle part is capped by what the
  meter measured, so a meter reading below the model's idle figure stays whole);
- what is left above idle is shared between the running attempts by their CPU time in
  the interval (children included); if they used none, evenly;
- the idle power of unreserved slots, and everything when nothing runs, is the node's
  own: ``unattributed``.

So the attempts' shares plus ``unattributed`` always add up to ``joules``: the frames
of a node add up to the node's energy over the same period.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

JOULES_PER_KWH = 3_600_000.0


@dataclass(frozen=True, slots=True)
class Attribution(Generic[K]):
    shares: dict[K, float]  # joules per running attempt
    unattributed: float  # joules the node spent that no attempt carries


def attribute_interval(
    joules: float,
    seconds: float,
    idle_watts: float,
    slots: int,
    cpu_seconds: Mapping[K, float],
) -> Attribution[K]:
    """Share ``joules`` spent in ``seconds`` between the attempts in ``cpu_seconds``."""
    joules = max(0.0, joules)
    running = len(cpu_seconds)
    if running == 0:
        return Attribution({}, joules)
    slots = max(slots, running)
    idle = min(joules, max(0.0, idle_watts) * max(0.0, seconds))
    idle_each = idle / slots
    dynamic = joules - idle
    cpu = {key: max(0.0, used) for key, used in cpu_seconds.items()}
    total_cpu = sum(cpu.values())
    shares = {
        # The ratio first: dynamic * used can underflow to 0 for a tiny CPU time.
        key: idle_each + (dynamic * (used / total_cpu) if total_cpu > 0 else dynamic / running)
        for key, used in cpu.items()
    }
    return Attribution(shares, idle_each * (slots - running))


def counter_delta(before: int, after: int, wraps_at: int) -> int:
    """How far a counter that wraps to zero at ``wraps_at`` moved (at most one wrap)."""
    if after >= before:
        return after - before
    return after + wraps_at - before


def model_watts(idle_watts: float, max_watts: float, utilisation: float) -> float:
    """P = P_idle + (P_max - P_idle) x utilisation, utilisation clamped to [0, 1]."""
    return idle_watts + (max_watts - idle_watts) * min(1.0, max(0.0, utilisation))


@dataclass(frozen=True, slots=True)
class RegionFigures:
    """Where nodes stand: what a joule of IT energy costs in facility energy, money and CO2."""

    pue: float  # facility energy / IT energy, >= 1
    price_per_kwh: float  # in the farm's currency
    carbon_g_per_kwh: float  # grid carbon intensity


@dataclass(frozen=True, slots=True)
class EnergyBill:
    it_joules: float
    facility_joules: float
    cost: float
    co2_grams: float


def bill_for(it_joules: float, region: RegionFigures) -> EnergyBill:
    """Facility energy = IT x PUE; cost and carbon follow from the facility's kWh."""
    facility = it_joules * region.pue
    kwh = facility / JOULES_PER_KWH
    return EnergyBill(
        it_joules=it_joules,
        facility_joules=facility,
        cost=kwh * region.price_per_kwh,
        co2_grams=kwh * region.carbon_g_per_kwh,
    )


def split_evenly(total: float, parts: int) -> list[float]:
    """``total`` in ``parts`` equal shares that add up to it exactly (the last takes the rest)."""
    if parts <= 0:
        return []
    each = total / parts
    return [each] * (parts - 1) + [total - each * (parts - 1)]
