"""Running totals of the frames rendered and the attempts ended, for the farm's metrics:
what each frame and each ended attempt adds.

The farm's counters and histograms of frames (how many, render and CPU seconds, energy,
cost, CO2, and the histogram buckets) are kept as running totals per (pool, region,
energy method), each measure a number, changed in the transaction that records or
restates frames. So a scrape of /metrics reads a table of a few hundred rows whatever
the history's size, instead of aggregating every frame ever rendered. Attempts that end
(done or failed) count the same way, per pool.
Pure: standard library only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS

UNMETERED = ""  # the method of a frame whose energy is not known
SUMS = ("render_seconds", "cpu_seconds", "it_joules", "facility_joules", "cost", "co2_grams")
Key = tuple[str, str, str, str]  # pool, region, energy method, measure


def bucket(measure: str, bound: float) -> str:
    """The measure counting frames whose ``measure`` is at most ``bound``."""
    return f"{measure}_le:{bound:g}"


# The buckets' measures, named once (a frame falls into most of them).
_SECONDS_BUCKETS = tuple((b, bucket("render_seconds", b)) for b in RENDER_SECONDS_BUCKETS)
_JOULES_BUCKETS = tuple((b, bucket("it_joules", b)) for b in ENERGY_JOULES_BUCKETS)


def frame_measures(frame: Mapping[str, Any]) -> dict[str, float]:
    """What one frame row adds to the totals of its (pool, region, method)."""
    measures: dict[str, float] = {"frames": 1.0}
    for name in SUMS:
        measures[name] = float(frame.get(name) or 0.0)
    seconds = frame["render_seconds"]
    for bound, name in _SECONDS_BUCKETS:
        if seconds <= bound:
            measures[name] = 1.0
    if frame.get("baseline_cost") is not None:  # what placement saved on this frame
        for name in ("facility_joules", "cost", "co2_grams"):
            saved = float(frame.get(f"baseline_{name}") or 0.0) - float(frame.get(name) or 0.0)
            measures[f"saved_{name}"] = saved
    joules = frame.get("it_joules")
    if joules is not None:
        measures["metered"] = 1.0
        for bound, name in _JOULES_BUCKETS:
            if joules <= bound:
                measures[name] = 1.0
    return measures


def totals_change(
    added: Iterable[Mapping[str, Any]], removed: Iterable[Mapping[str, Any]] = ()
) -> dict[Key, float]:
    """How the totals change when the ``added`` frame rows are recorded and the
    ``removed`` ones are not any more (a restated frame is removed as it was and added
    as it is); changes that cancel out are left out."""
    change: dict[Key, float] = defaultdict(float)
    for sign, frames in ((1.0, added), (-1.0, removed)):
        for frame in frames:
            place = (frame["pool"], frame["region"], frame.get("energy_method") or UNMETERED)
            for measure, value in frame_measures(frame).items():
                change[(*place, measure)] += sign * value
    return {key: value for key, value in change.items() if value}


ENDED_STATES = ("done", "failed")  # the attempts the counters count


def attempts_change(ended: Iterable[tuple[str, str, float | None]]) -> dict[tuple[str, str], float]:
    """What (pool, state, IT joules) of attempts that ended add to each (pool, measure):
    attempts ended, attempts failed, and the energy of each outcome."""
    change: dict[tuple[str, str], float] = defaultdict(float)
    for pool, state, joules in ended:
        change[(pool, "ended")] += 1
        if state == "failed":
            change[(pool, "failed")] += 1
        change[(pool, f"joules_{state}")] += joules or 0.0
    return {key: value for key, value in change.items() if value}
