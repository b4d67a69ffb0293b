"""Plans: a workload and a farm read from a studio's files (a CSV of shots, a YAML or
JSON farm), simulated under each placement policy (scheduler/core/planner.py), and
reported side by side, as a table, JSON, or a chart of busy slots and grid carbon.

Workload CSV, one shot a row (a header row names the columns; the last four optional:
when it comes, its deadline, its scene's size and each frame's output's)::

    shot,frames,seconds_per_frame,joules_per_frame,submit_hours,deadline_hours,scene_gb,output_mb
    sq010_sh010,240,180,45000,0,48,12,25

Farm (YAML or JSON), each region with its link to the studio (none: near)::

    regions:
      - name: guizhou-hydro
        slots: 200
        pue: 1.2
        price: 0.35
        carbon: 24
        link: {bandwidth_mbps: 1000, latency_ms: 15, price_per_gb: 0.5}
      - name: shanghai
        slots: 40
        pue: 1.4
        tariff: [[0, 0.3], [8, 1.1], [22, 0.3]]        # HOUR, price; in place of price
        carbon_profile: [[0, 520], [10, 580]]          # HOUR, gCO2/kWh; of carbon
        utc_offset_hours: 8
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.core.planner import PlanReport, Shot, SimRegion, carbon_over_time, compare
from scheduler.core.signals import HOUR, DailyCurve, RegionSignals
from scheduler.core.siting import NEAR, Link
from scheduler.db import FrameResultRow, JobRow, ManifestRow, NodeRow, Studio
from scheduler.errors import InvalidRequest
from scheduler.settings import Settings
from scheduler.usecases.regions import UNKNOWN_REGION, links_from, load_links, load_signals
from scheduler.usecases.submissions import PolicyName, Text

GB, MB = 1e9, 1e6
MAX_SHOTS = 100_000
MAX_FRAMES = 10_000_000  # a plan's frames in all: a feature film is 150,000 or so


def read_workload(text: str) -> list[Shot]:
    """The shots of a workload CSV; ``InvalidRequest`` names the row and column."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise InvalidRequest("workload", "a CSV with a header row and a row per shot")
    if len(rows) > MAX_SHOTS:
        raise InvalidRequest("workload", f"at most {MAX_SHOTS} shots")
    shots = []
    for number, row in enumerate(rows, start=2):
        where = f"workload line {number}"
        deadline = _number(row, "deadline_hours", where, required=False)
        shots.append(
            Shot(
                name=(row.get("shot") or f"line {number}").strip()[:200],
                frames=int(_number(row, "frames", where, integer=True) or 0),
                seconds_per_frame=_number(row, "seconds_per_frame", where) or 0.0,
                joules_per_frame=_number(row, "joules_per_frame", where) or 0.0,
                submit_at=(_number(row, "submit_hours", where, required=False) or 0.0) * HOUR,
                deadline=deadline * HOUR if deadline is not None else None,
                scene_bytes=(_number(row, "scene_gb", where, required=False) or 0.0) * GB,
                output_bytes=(_number(row, "output_mb", where, required=False) or 0.0) * MB,
            )
        )
    if sum(shot.frames for shot in shots) > MAX_FRAMES:
        raise InvalidRequest("workload", f"at most {MAX_FRAMES} frames in all")
    return shots


def _number(
    row: Mapping[str, str | None],
    column: str,
    where: str,
    required: bool = True,
    integer: bool = False,
) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        if required:
            raise InvalidRequest("workload", f"{where}: no {column}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest("workload", f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (integer and (value != int(value) or value < 1)):
        kind = "a whole number of at least 1" if integer else "a number of at least 0"
        raise InvalidRequest("workload", f"{where}: {column} is {kind}, not {text!r}")
    return value


def read_farm(text: str) -> list[SimRegion]:
    """The regions of a farm file (YAML or JSON); ``InvalidRequest`` says what is wrong."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidRequest("farm", f"not YAML or JSON: {error}") from None
    regions = document.get("regions") if isinstance(document, dict) else None
    if not isinstance(regions, list) or not regions:
        raise InvalidRequest("farm", "a farm has regions: [{name, slots, pue, ...}, ...]")
    return [_region(item, index) for index, item in enumerate(regions)]


def _region(item: Any, index: int) -> SimRegion:
    where = f"regions[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidRequest("farm", f"{where}: a region has a name")
    try:
        offset = float(item.get("utc_offset_hours", 8))
        price = _curve(item, "tariff", "price", offset)
        carbon = _curve(item, "carbon_profile", "carbon", offset)
        slots, pue = int(item["slots"]), float(item["pue"])
        link = _link(item.get("link"))
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidRequest("farm", f"{where} ({item['name']}): {error}") from None
    if slots < 0 or not 1 <= pue < math.inf:
        raise InvalidRequest("farm", f"{where}: slots at least 0, a PUE at least 1")
    return SimRegion(RegionSignals(item["name"], pue, price, carbon), slots, link)


def _link(item: Any) -> Link:
    if item is None:
        return NEAR
    if not isinstance(item, dict):
        raise TypeError("link: {bandwidth_mbps, latency_ms, price_per_gb}")
    unknown = set(item) - {"bandwidth_mbps", "latency_ms", "price_per_gb"}
    if unknown:
        raise ValueError(f"link: unknown {sorted(unknown)}")
    return Link(
        float(item["bandwidth_mbps"]),
        float(item.get("latency_ms", 0.0)),
        float(item.get("price_per_gb", 0.0)),
    )


def _curve(item: Mapping[str, Any], steps: str, flat: str, offset: float) -> DailyCurve:
    if item.get(steps):
        return DailyCurve(tuple((float(h), float(v)) for h, v in item[steps]), offset)
    return DailyCurve(((0.0, float(item[flat])),), offset)


def table(reports: Sequence[PlanReport], currency: str) -> str:
    """The reports side by side, the first as the baseline: energy and its cost, then
    what moving scenes and frames over the links cost; compared on both together."""
    head = (
        f"{'policy':<10} {'makespan':>10} {'use':>6} {'MWh':>9} {currency:>11} {'tCO2':>8} "
        f"{'moved TB':>9} {'transfer':>10} missed"
    )
    lines = [head]
    for report in reports:
        lines.append(
            f"{report.policy:<10} {report.makespan_seconds / HOUR:>9.1f}h "
            f"{report.utilisation:>6.1%} {report.facility_kwh / 1000:>9.2f} "
            f"{report.cost:>11,.0f} {report.co2_grams / 1e6:>8.2f} "
            f"{report.moved_bytes / 1e12:>9.2f} {report.transfer_cost:>10,.0f} "
            f"{report.deadlines_missed:>6}"
        )
    if len(reports) > 1 and reports[0].total_cost > 0 and reports[0].co2_grams > 0:
        base = reports[0]
        for report in reports[1:]:
            lines.append(
                f"{report.policy} against {base.policy}: cost "
                f"{report.total_cost / base.total_cost - 1:+.1%} (energy and transfer), "
                f"CO2 {report.co2_grams / base.co2_grams - 1:+.1%}"
            )
    return "\n".join(lines)


def chart(
    reports: Sequence[PlanReport], regions: Sequence[SimRegion], start: float, path: str
) -> None:
    """Busy slots per policy and each region's grid carbon over the plan, as a PNG or
    SVG (by the file's name). Needs matplotlib (``pip install 'renderfarm[plan]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidRequest(
            "chart", "a chart needs matplotlib: pip install 'renderfarm[plan]'"
        ) from None
    end = start + max((r.makespan_seconds for r in reports), default=HOUR)
    figure, (slots_axis, carbon_axis) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for report in reports:
        times = [(t - start) / HOUR for t, _ in report.busy] + [(end - start) / HOUR]
        busy = [b for _, b in report.busy] + [report.busy[-1][1]]
        slots_axis.step(times, busy, where="post", label=report.policy)
    slots_axis.set_ylabel("busy slots")
    slots_axis.legend(loc="upper right")
    samples = carbon_over_time(regions, start, end)
    for region in regions:
        name = region.signals.name
        carbon_axis.plot(
            [(t - start) / HOUR for t, _ in samples], [v[name] for _, v in samples], label=name
        )
    carbon_axis.set_ylabel("grid gCO2/kWh")
    carbon_axis.set_xlabel("hours from the start")
    carbon_axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# Plans over the API (POST /v1/plans) ---------------------------------------------------

MAX_API_FRAMES = 200_000  # frames a plan over the API simulates, per policy
ALL_POLICIES: tuple[PolicyName, ...] = ("fastest", "cheapest", "greenest")


class ShotSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, StringConstraints(min_length=1, max_length=200)]
    frames: int = Field(ge=1, le=MAX_API_FRAMES)
    seconds_per_frame: float = Field(ge=0, le=7 * 24 * 3600, allow_inf_nan=False)
    joules_per_frame: float = Field(ge=0, le=1e12, allow_inf_nan=False)
    submit_hours: float = Field(0.0, ge=0, le=24 * 365, allow_inf_nan=False)
    deadline_hours: float | None = Field(None, ge=0, le=24 * 365, allow_inf_nan=False)
    scene_gb: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False)
    output_mb: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False)

    def shot(self) -> Shot:
        deadline = self.deadline_hours * HOUR if self.deadline_hours is not None else None
        return Shot(
            self.name, self.frames, self.seconds_per_frame, self.joules_per_frame,
            self.submit_hours * HOUR, deadline, self.scene_gb * GB, self.output_mb * MB,
        )  # fmt: skip


class LinkSpec(BaseModel):
    """The network between the studio and a region."""

    model_config = ConfigDict(extra="forbid")

    bandwidth_mbps: float = Field(gt=0, le=1e7, allow_inf_nan=False)
    latency_ms: float = Field(0.0, ge=0, le=60_000, allow_inf_nan=False)
    price_per_gb: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False)


class RegionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, StringConstraints(min_length=1, max_length=64)]
    slots: int = Field(ge=0, le=1_000_000)
    pue: float = Field(ge=1, le=10, allow_inf_nan=False)
    price: float = Field(0.0, ge=0, le=1000, allow_inf_nan=False)
    carbon: float = Field(0.0, ge=0, le=10_000, allow_inf_nan=False)
    tariff: list[tuple[float, float]] | None = Field(None, max_length=48)
    carbon_profile: list[tuple[float, float]] | None = Field(None, max_length=48)
    utc_offset_hours: float = Field(8.0, ge=-12, le=14)
    link: LinkSpec | None = Field(None, description="to the studio; none: near")

    def region(self) -> SimRegion:
        try:
            return _region(self.model_dump(), 0)
        except InvalidRequest as error:
            raise InvalidRequest("farm", f"{self.name}: {error.message}") from None


class PlanRequest(BaseModel):
    """A workload and a farm to simulate under each policy. The workload is shots, or
    ``"past"``: the studio's rendered jobs (each a shot of its frames, their mean render
    seconds and IT joules). The farm is regions with their slots, or none: the farm's
    own regions, each with the slots of its live nodes."""

    model_config = ConfigDict(extra="forbid")

    workload: list[ShotSpec] | Literal["past"] = Field(max_length=10_000)
    farm: list[RegionSpec] | None = Field(None, max_length=64)
    policies: list[PolicyName] = Field(
        default_factory=lambda: list(ALL_POLICIES), min_length=1, max_length=3
    )
    start: AwareDatetime | None = Field(None, description="default: now")
    overhead: float | None = Field(
        None, ge=0, le=3600, allow_inf_nan=False,
        description="seconds a slot waits between frames (default: a scheduler tick)",
    )  # fmt: skip


def past_workload(session: Session, studio_id: int, limit: int = 1000) -> list[Shot]:
    """The studio's latest rendered jobs as shots: frames, mean seconds and joules, its
    scene's size and its frames' mean output size."""
    rows = session.execute(
        sql_select(
            col(JobRow.name),
            func.count(),
            func.avg(FrameResultRow.render_seconds),
            func.avg(FrameResultRow.it_joules),
            func.max(ManifestRow.size),
            func.avg(FrameResultRow.output_bytes),
        )
        .join(FrameResultRow, col(FrameResultRow.job_id) == col(JobRow.id))
        .outerjoin(ManifestRow, col(ManifestRow.id) == col(JobRow.manifest_id))
        .where(col(JobRow.studio_id) == studio_id)
        .group_by(col(JobRow.id), col(JobRow.name))
        .order_by(col(JobRow.id).desc())
        .limit(limit)
    ).all()
    return [
        Shot(
            str(name),
            int(frames),
            float(seconds or 0.0),
            float(joules or 0.0),
            scene_bytes=float(scene or 0),
            output_bytes=float(output or 0),
        )
        for name, frames, seconds, joules, scene, output in rows
    ]


def live_farm(session: Session, since: float, home: str | None = None) -> list[SimRegion]:
    """The farm's regions with the render slots of their live nodes, and their links
    to the studio's home region."""
    slots: dict[str, int] = {}
    for region, count in session.execute(
        sql_select(col(NodeRow.region), func.sum(NodeRow.slots))
        .where(
            col(NodeRow.state) == "online",
            col(NodeRow.last_heartbeat) >= since,
            col(NodeRow.admin) == "enabled",  # drained and disabled nodes take no work
        )
        .group_by(col(NodeRow.region))
    ):
        slots[str(region)] = int(count or 0)
    signals = load_signals(session)
    links = links_from(home, load_links(session))
    return [
        SimRegion(
            signals.get(name) or RegionSignals.flat(name, UNKNOWN_REGION),
            count,
            links.get(name, NEAR),
        )
        for name, count in sorted(slots.items())
    ]


def plan_for(
    engine: Engine, settings: Settings, studio_id: int, body: PlanRequest, now: float
) -> dict[str, Any]:
    """A plan over the API: the request's workload and farm (or the studio's past jobs,
    the farm's live slots) simulated under each of its policies."""
    with Session(engine) as session:
        shots = (
            past_workload(session, studio_id)
            if body.workload == "past"
            else [spec.shot() for spec in body.workload]
        )
        studio = session.get(Studio, studio_id)
        home = studio.home_region if studio is not None else None
        farm = (
            [spec.region() for spec in body.farm]
            if body.farm is not None
            else live_farm(session, now - settings.node_timeout, home)
        )
    if not shots:
        raise InvalidRequest("workload", "no shots: this studio has no rendered job yet")
    if sum(shot.frames for shot in shots) > MAX_API_FRAMES:
        raise InvalidRequest("workload", f"at most {MAX_API_FRAMES} frames over the API")
    if sum(region.slots for region in farm) <= 0:
        raise InvalidRequest("farm", "no render slot: give regions with slots, or start nodes")
    start = body.start.timestamp() if body.start is not None else now
    overhead = body.overhead if body.overhead is not None else settings.tick_seconds
    reports = compare(shots, farm, body.policies, start, overhead)
    return {
        "start": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(),
        "currency": settings.currency,
        "reports": [report.as_dict() for report in reports],
    }
