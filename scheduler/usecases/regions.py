"""Regions: the PUE, electricity price and grid carbon of the halls where nodes stand.

They are configuration, kept in the database (table ``regions``) so that every
component sees the same figures; operators set them with ``renderfarm region set``.
A node names its region (``renderfarm worker --region``); a region the farm does not
know yet is added with ``UNKNOWN_REGION`` figures and a warning, so that its frames
are billed conservatively rather than not at all, and the operator sees it listed.

Where the installed figures come from (set your own contract's figures):

- grid carbon, ``guizhou``: China's national average CO2 emission factor of
  electricity, 0.5366 kg/kWh (Ministry of Ecology and Environment and National Bureau
  of Statistics, the national average factor published for 2022). Guizhou's own grid
  mixes coal and hydropower; without a green-power contract the average is the honest
  figure;
- grid carbon, ``guizhou-hydro``: 24 g/kWh, the IPCC AR5 (WG III, Annex III) median
  life-cycle emissions of hydropower, for nodes under a hydropower purchase agreement
  or green certificates;
- PUE 1.2: the ceiling that the "East Data, West Computing" plan (NDRC and others,
  2021-2022) sets for new large data centres in the western hub nodes, Guizhou among
  them; China's average data centre is nearer 1.5;
- price 0.35 CNY/kWh: an example of the large-industry tariffs that Guizhou offers
  data centres; contracts differ, so set yours. It is flat: Guizhou's 2026 pricing
  notice ended peak-valley time-of-use prices for users who buy on the wholesale
  market, as large data centres do, from March 2026;
- ``zhejiang``, an east-coast hall near the studios (Hangzhou's), for a studio's home
  region: PUE 1.25, the plan's cap for new large centres in the eastern hubs; a
  time-of-use tariff with Zhejiang's periods and ratios for industrial and commercial
  users from 2026-07-01, spring and autumn (valley 0-7 h and 11-14 h at 0.4x the flat
  price, peak 16-23 h at 1.85x; summer and winter peaks are shorter, set them if you
  render then), on an example flat price of 0.65 CNY/kWh; carbon, the national average
  factor (MEE publishes provincial factors: set Zhejiang's for your year);
- the link ``zhejiang``-``guizhou`` (and ``-guizhou-hydro``): 15 ms one way, the light
  time of about 1,500 km of fibre with routing; 1 Gbit/s at 0.5 CNY per GB is an
  example leased line. Links are the same both ways; regions with none between them
  are treated as near (nothing is modelled), so set the links of a farm whose studios
  are far from its halls.

Every installed figure is marked as a default in its ``source`` until an operator sets
it; every frame's bill records the PUE, price and carbon figure it was billed with.
"""

from __future__ import annotations

import logging
import math

from sqlmodel import Session, select

from scheduler.core.energy import RegionFigures
from scheduler.core.signals import DailyCurve, Forecast, ForecastPoint, RegionSignals
from scheduler.core.siting import Link
from scheduler.db import Region, RegionLink
from scheduler.errors import InvalidRequest

log = logging.getLogger(__name__)

# For a region nobody configured: national grid carbon, an average hall's PUE, a
# typical large-industry price. Conservative: a bill errs on the high side.
UNKNOWN_REGION = RegionFigures(pue=1.5, price_per_kwh=0.6, carbon_g_per_kwh=536.6)


def load_regions(session: Session) -> dict[str, RegionFigures]:
    return {
        row.name: RegionFigures(row.pue, row.price_per_kwh, row.carbon_g_per_kwh)
        for row in session.exec(select(Region))
    }


def load_signals(session: Session) -> dict[str, RegionSignals]:
    """Every region's figures over the day (``signals_of``)."""
    return {row.name: signals_of(row) for row in session.exec(select(Region))}


def signals_of(row: Region) -> RegionSignals:
    """A region's PUE, its tariff (else its flat price) and its hourly carbon profile
    (else its flat figure), in its local hours."""
    offset = row.utc_offset_hours
    price = _curve(row.tariff, offset) or DailyCurve(((0.0, row.price_per_kwh),), offset)
    carbon = _curve(row.carbon_profile, offset) or DailyCurve(
        ((0.0, row.carbon_g_per_kwh),), offset
    )
    forecast = Forecast(
        tuple(ForecastPoint(float(a), float(b), float(v)) for a, b, v in row.forecast or ())
    )
    return RegionSignals(row.name, row.pue, price, carbon, forecast, source=row.source)


def _curve(steps: list[list[float]] | None, offset: float) -> DailyCurve | None:
    if not steps:
        return None
    try:
        return DailyCurve(tuple((float(h), float(v)) for h, v in steps), offset)
    except (ValueError, TypeError):  # stored by hand, wrongly: the flat figure holds
        log.warning("a region's stored curve %r does not read; its flat figure holds", steps)
        return None


UNKNOWN_SIGNALS = RegionSignals.flat("unknown", UNKNOWN_REGION)


def add_unknown_region(session: Session, name: str, now: float) -> RegionFigures:
    """Record a region a node named but nobody configured, with conservative figures."""
    log.warning(
        "region %r is not configured: billing its frames with PUE %.2f, %.2f per kWh, "
        "%.0f gCO2/kWh until an operator sets it (renderfarm region set)",
        name,
        UNKNOWN_REGION.pue,
        UNKNOWN_REGION.price_per_kwh,
        UNKNOWN_REGION.carbon_g_per_kwh,
    )
    session.add(
        Region(
            name=name,
            pue=UNKNOWN_REGION.pue,
            price_per_kwh=UNKNOWN_REGION.price_per_kwh,
            carbon_g_per_kwh=UNKNOWN_REGION.carbon_g_per_kwh,
            source="not configured: conservative defaults (scheduler/usecases/regions.py)",
            updated_at=now,
        )
    )
    return UNKNOWN_REGION


def set_region(
    session: Session,
    name: str,
    now: float,
    pue: float | None = None,
    price_per_kwh: float | None = None,
    carbon_g_per_kwh: float | None = None,
    source: str | None = None,
    tariff: list[tuple[float, float]] | None = None,
    carbon_profile: list[tuple[float, float]] | None = None,
    utc_offset_hours: float | None = None,
) -> Region:
    """Create or change a region; figures not given keep their value (new: UNKNOWN_REGION's).
    A ``tariff`` or ``carbon_profile`` (``(from_hour, value)`` steps in the region's local
    hours) replaces the flat price or carbon figure; an empty one goes back to it.

    Frames already rendered keep the bills they were given.
    """
    if pue is not None and not 1 <= pue < math.inf:
        raise InvalidRequest("pue", f"at least 1 (facility energy includes IT energy), got {pue}")
    for field, value in (("price_per_kwh", price_per_kwh), ("carbon_g_per_kwh", carbon_g_per_kwh)):
        if value is not None and not 0 <= value < math.inf:
            raise InvalidRequest(field, f"cannot be negative, got {value}")
    region = session.get(Region, name) or Region(
        name=name,
        pue=UNKNOWN_REGION.pue,
        price_per_kwh=UNKNOWN_REGION.price_per_kwh,
        carbon_g_per_kwh=UNKNOWN_REGION.carbon_g_per_kwh,
        updated_at=now,
    )
    if pue is not None:
        region.pue = pue
    if price_per_kwh is not None:
        region.price_per_kwh = price_per_kwh
    if carbon_g_per_kwh is not None:
        region.carbon_g_per_kwh = carbon_g_per_kwh
    if source is not None:
        region.source = source
    if utc_offset_hours is not None:
        if not -12 <= utc_offset_hours <= 14:
            raise InvalidRequest("utc_offset_hours", f"-12 to 14 hours, got {utc_offset_hours}")
        region.utc_offset_hours = utc_offset_hours
    for field, steps in (("tariff", tariff), ("carbon_profile", carbon_profile)):
        if steps is None:
            continue
        if steps:
            try:
                DailyCurve(tuple(steps), region.utc_offset_hours)
            except ValueError as error:
                raise InvalidRequest(field, str(error)) from None
        setattr(region, field, [[float(h), float(v)] for h, v in steps] or None)
    region.updated_at = now
    session.add(region)
    return region


def list_regions(session: Session) -> list[Region]:
    return list(session.exec(select(Region).order_by(Region.name)))


def load_links(session: Session) -> dict[tuple[str, str], Link]:
    """Every configured link, under both orders of its regions' names."""
    links = {}
    for row in session.exec(select(RegionLink)):
        link = Link(row.bandwidth_mbps, row.latency_ms, row.price_per_gb)
        links[row.region_a, row.region_b] = links[row.region_b, row.region_a] = link
    return links


def links_from(home: str | None, links: dict[tuple[str, str], Link]) -> dict[str, Link]:
    """The links from a studio's home region to the others (none without a home)."""
    return {b: link for (a, b), link in links.items() if a == home}


def set_link(
    session: Session,
    a: str,
    b: str,
    now: float,
    bandwidth_mbps: float,
    latency_ms: float,
    price_per_gb: float,
    source: str | None = None,
) -> RegionLink:
    """Create or change the link between two known regions (the same both ways)."""
    if a == b:
        raise InvalidRequest("regions", f"a link joins two regions, not {a!r} to itself")
    for name in (a, b):
        if session.get(Region, name) is None:
            known = sorted(session.exec(select(Region.name)).all())
            raise InvalidRequest("region", f"no region {name!r}; known: {known}")
    try:
        Link(bandwidth_mbps, latency_ms, price_per_gb)
    except ValueError as error:
        raise InvalidRequest("link", str(error)) from None
    first, second = sorted((a, b))
    row = session.get(RegionLink, (first, second)) or RegionLink(
        region_a=first, region_b=second, bandwidth_mbps=0, latency_ms=0, price_per_gb=0,
        updated_at=now,
    )  # fmt: skip
    row.bandwidth_mbps, row.latency_ms, row.price_per_gb = bandwidth_mbps, latency_ms, price_per_gb
    row.source = source if source is not None else row.source
    row.updated_at = now
    session.add(row)
    return row


def remove_link(session: Session, a: str, b: str) -> bool:
    """Forget the link between two regions: they are near again. False: there was none."""
    row = session.get(RegionLink, tuple(sorted((a, b))))
    if row is None:
        return False
    session.delete(row)
    return True


def list_links(session: Session) -> list[RegionLink]:
    return list(session.exec(select(RegionLink).order_by(RegionLink.region_a, RegionLink.region_b)))
