"""Bills of energy, cost and carbon: made per frame at ingestion, summed per job and day.

A frame's bill is computed once, from the IT joules its node metered and its region's
figures at the moment it finished (its tariff hour, its carbon profile's hour:
``scheduler.core.signals``), and stored with the frame with the figures it used;
totals are sums of stored bills, so they never change after the fact. The billing day
is the frame's finish date in the farm's billing time zone (``billing_timezone``,
Asia/Shanghai by default: the studios' day, not UTC's).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, select
from sqlmodel import Session, col

from scheduler.core.energy import RegionFigures, bill_for
from scheduler.core.rollups import attempts_change, totals_change
from scheduler.core.signals import RegionSignals
from scheduler.db import AttemptTotal, FrameResultRow, FrameTotal, Studio
from scheduler.db.among import among
from scheduler.db.engine import insert_or
from scheduler.usecases.regions import (
    UNKNOWN_SIGNALS,
    add_unknown_region,
    load_signals,
)


class FrameBiller:
    """Bills the frames of one ingest batch from the regions' figures, loaded once.

    ``load_regions`` reads the figures and registers (writes) any region a node named
    that no operator configured; ``bill`` only computes.
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._regions: dict[str, RegionSignals] = {}
        self._homes: dict[int, str | None] = {}

    def load_regions(self, session: Session, names: Iterable[str], now: float) -> None:
        """Load the figures of every region; record the unknown among ``names``."""
        if not self._regions:
            self._regions = load_signals(session)
        for name in sorted(set(names) - set(self._regions)):
            self._regions[name] = RegionSignals.flat(name, add_unknown_region(session, name, now))

    def load_homes(self, session: Session, studio_ids: Iterable[int]) -> None:
        """The home regions of these studios, for the baselines of their frames."""
        ids = sorted(set(studio_ids) - set(self._homes))
        if ids:
            found = session.execute(
                select(col(Studio.id), col(Studio.home_region)).where(col(Studio.id).in_(ids))
            )
            self._homes.update({studio: home for studio, home in found})

    def baseline(self, studio_id: int, submitted_at: float) -> RegionFigures | None:
        """The figures of the studio's home region when the job was submitted: where
        and when its frames would have rendered without the farm's placement."""
        home = self._homes.get(studio_id)
        if home is None:
            return None
        return self._regions.get(home, UNKNOWN_SIGNALS).at(submitted_at)

    def bill(
        self,
        region: str,
        it_joules: float | None,
        finished_at: float,
        baseline: RegionFigures | None = None,
    ) -> dict[str, Any]:
        """The billing columns of a frame row (its region's figures were loaded), with
        the ``baseline`` bill of the same energy where one is given."""
        columns: dict[str, Any] = {
            "day": dt.datetime.fromtimestamp(finished_at, self.zone).date(),
            "region": region,
            "it_joules": it_joules,
            "facility_joules": None,
            "cost": None,
            "co2_grams": None,
            "pue": None,
            "price_per_kwh": None,
            "carbon_g_per_kwh": None,
            "baseline_facility_joules": None,
            "baseline_cost": None,
            "baseline_co2_grams": None,
        }
        if it_joules is None:
            return columns
        if baseline is not None:
            other = bill_for(it_joules, baseline)
            columns.update(
                baseline_facility_joules=other.facility_joules,
                baseline_cost=other.cost,
                baseline_co2_grams=other.co2_grams,
            )
        figures = self._regions.get(region, UNKNOWN_SIGNALS).at(finished_at)
        bill = bill_for(it_joules, figures)
        columns.update(
            facility_joules=bill.facility_joules,
            cost=bill.cost,
            co2_grams=bill.co2_grams,
            pue=figures.pue,
            price_per_kwh=figures.price_per_kwh,
            carbon_g_per_kwh=figures.carbon_g_per_kwh,
        )
        return columns


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    frames: int = 0  # frames rendered
    metered_frames: int = 0  # of which the energy is known
    render_seconds: float = 0.0
    it_joules: float = 0.0
    facility_joules: float = 0.0
    cost: float = 0.0
    co2_grams: float = 0.0
    # The frames with a baseline (a studio home region): the baseline's figures, and
    # the same frames' own (what was saved is the difference).
    baseline_facility_joules: float = 0.0
    baseline_cost: float = 0.0
    baseline_co2_grams: float = 0.0
    compared_facility_joules: float = 0.0
    compared_cost: float = 0.0
    compared_co2_grams: float = 0.0
    baselined_frames: int = 0

    def __add__(self, other: EnergyTotals) -> EnergyTotals:
        return EnergyTotals(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )


def totals_columns() -> tuple[Any, ...]:
    baselined = col(FrameResultRow.baseline_cost).is_not(None)

    def compared(column: Any) -> Any:
        return func.coalesce(func.sum(case((baselined, column), else_=None)), 0.0)

    return (
        func.count(),
        func.count(col(FrameResultRow.it_joules)),
        func.coalesce(func.sum(FrameResultRow.render_seconds), 0.0),
        func.coalesce(func.sum(FrameResultRow.it_joules), 0.0),
        func.coalesce(func.sum(FrameResultRow.facility_joules), 0.0),
        func.coalesce(func.sum(FrameResultRow.cost), 0.0),
        func.coalesce(func.sum(FrameResultRow.co2_grams), 0.0),
        func.coalesce(func.sum(FrameResultRow.baseline_facility_joules), 0.0),
        func.coalesce(func.sum(FrameResultRow.baseline_cost), 0.0),
        func.coalesce(func.sum(FrameResultRow.baseline_co2_grams), 0.0),
        compared(FrameResultRow.facility_joules),
        compared(FrameResultRow.cost),
        compared(FrameResultRow.co2_grams),
        func.count(col(FrameResultRow.baseline_cost)),
    )


def totals_of(row: Sequence[Any]) -> EnergyTotals:
    frames, metered, seconds, it, facility, cost, co2, *compared, baselined = row
    b_facility, b_cost, b_co2, c_facility, c_cost, c_co2 = (float(v) for v in compared)
    return EnergyTotals(
        int(frames), int(metered), float(seconds), float(it), float(facility), float(cost),
        float(co2), b_facility, b_cost, b_co2, c_facility, c_cost, c_co2, int(baselined),
    )  # fmt: skip


def count_frames(
    session: Session,
    added: Sequence[Mapping[str, Any]],
    restated: Mapping[int, Mapping[str, Any]],
) -> None:
    """Change the running totals of frames (scheduler/core/rollups.py) for frame rows
    being recorded (``added``) and rows being restated (by id, their new bill columns),
    in the transaction that writes them. Call before the restating update."""
    before = []
    if restated:
        before = [
            dict(row._mapping) for row in session.execute(_AS_COUNTED, {"ids": list(restated)})
        ]
    after = [{**row, **restated[row["id"]]} for row in before]
    change = totals_change([*added, *after], before)
    _add(session, FrameTotal, ("pool", "region", "method", "measure"), change)


def count_attempts(session: Session, ended: Sequence[tuple[str, str, float | None]]) -> None:
    """Change the running totals of attempts for those that end in this transaction:
    (pool, state, IT joules) of each."""
    _add(session, AttemptTotal, ("pool", "measure"), attempts_change(ended))


def _add(session: Session, model: Any, keys: tuple[str, ...], change: Mapping[Any, float]) -> None:
    """Add each value of ``change`` to its running total (created at 0 where new)."""
    if not change:
        return
    table = model.__table__
    built = (session.get_bind().dialect.name, table.name)
    upsert = _UPSERTS.get(built)
    if upsert is None:  # built once: every ingested batch adds to the totals
        upsert = insert_or(session, table)
        upsert = _UPSERTS[built] = upsert.on_conflict_do_update(
            index_elements=list(keys), set_={"value": table.c.value + upsert.excluded.value}
        )
    session.execute(
        upsert,
        [
            {**dict(zip(keys, key, strict=True)), "value": value}
            for key, value in sorted(change.items())
        ],
    )


_UPSERTS: dict[tuple[str, str], Any] = {}  # by dialect and table
_AS_COUNTED = select(  # what a frame row counts for in the totals, as it is stored
    col(FrameResultRow.id),
    col(FrameResultRow.pool),
    col(FrameResultRow.region),
    col(FrameResultRow.energy_method),
    col(FrameResultRow.render_seconds),
    col(FrameResultRow.cpu_seconds),
    col(FrameResultRow.it_joules),
    col(FrameResultRow.facility_joules),
    col(FrameResultRow.cost),
    col(FrameResultRow.co2_grams),
).where(among(col(FrameResultRow.id), "ids"))


def usage_by_day(
    session: Session, studio_id: int, since: dt.date | None, until: dt.date | None
) -> list[tuple[dt.date, EnergyTotals]]:
    """A studio's totals per billing day, oldest first, days with frames only."""
    query = select(col(FrameResultRow.day), *totals_columns()).where(
        col(FrameResultRow.studio_id) == studio_id
    )
    if since is not None:
        query = query.where(col(FrameResultRow.day) >= since)
    if until is not None:
        query = query.where(col(FrameResultRow.day) <= until)
    rows = session.execute(
        query.group_by(col(FrameResultRow.day)).order_by(col(FrameResultRow.day))
    )
    return [(_as_date(row[0]), totals_of(row[1:])) for row in rows]


def _as_date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
