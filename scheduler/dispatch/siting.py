"""The placement policies of jobs, applied at dispatch (scheduler/core/siting.py): for each
job placed for cost or carbon, its regions best first, and whether it waits for a
cheaper or cleaner window before its deadline.

What it reads, and keeps for ``ttl`` seconds (a tick's cost must not grow with a job's
rendered frames): the regions' signals, and per job and region the mean IT joules and
render seconds of its rendered frames. A region where the job has no frame yet is
ranked with the mean of its measured regions, else one joule (any positive figure ranks
regions by their price and carbon alone). A job not yet started is planned with its
frame time bounded by its own time limit per frame, the longest a frame may take, and
its pool's slots (not counting the nodes' queue buffers): so a wait never risks a
deadline that the job's frames could meet.

What a job moves is weighed too, where its studio names a home region and links from
it are configured: its scene (its manifest's size, shared by its frames) and its
frames' outputs (their measured mean size) over each region's link.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlmodel import Session, col

from scheduler.core.placement import Room
from scheduler.core.signals import RegionSignals
from scheduler.core.siting import (
    Link,
    PlacementPolicy,
    StartPlan,
    Traffic,
    plan_start,
    rank_regions,
)
from scheduler.db import ChunkRow, FrameResultRow, JobRow, ManifestRow, Studio
from scheduler.db.among import among
from scheduler.usecases.regions import UNKNOWN_SIGNALS, links_from, load_links, load_signals

WAITS_FOR_WINDOW = "waits for a"  # how the message of a time-shifted job begins

_MEASURED = (
    sql_select(
        col(FrameResultRow.job_id),
        col(FrameResultRow.region),
        func.avg(FrameResultRow.it_joules),
        func.avg(FrameResultRow.render_seconds),
        func.avg(FrameResultRow.output_bytes),
    )
    .where(among(col(FrameResultRow.job_id), "ids"))
    .group_by(col(FrameResultRow.job_id), col(FrameResultRow.region))
)
_LEFT = (
    sql_select(col(ChunkRow.job_id), func.coalesce(func.sum(ChunkRow.frame_count), 0))
    .where(
        among(col(ChunkRow.job_id), "ids"),
        col(ChunkRow.state) == "queued",
    )
    .group_by(col(ChunkRow.job_id))
)
_TRAFFIC = (
    sql_select(col(JobRow.id), col(Studio.home_region), col(ManifestRow.size))
    .join(Studio, col(Studio.id) == col(JobRow.studio_id))
    .outerjoin(ManifestRow, col(ManifestRow.id) == col(JobRow.manifest_id))
    .where(among(col(JobRow.id), "ids"))
)


@dataclass(frozen=True, slots=True)
class JobSiting:
    prefer: tuple[str, ...]  # regions, best first
    start: StartPlan | None  # None: no deadline to plan against


@dataclass(slots=True)
class _Measured:
    joules: dict[str, float] = field(default_factory=dict)  # by region
    seconds: float | None = None  # mean render seconds of its frames
    output_bytes: float = 0.0  # mean size of its frames' outputs
    home: str | None = None  # its studio's region
    scene_bytes: float = 0.0  # its manifest's size


class Siting:
    """The policies' decisions for a tick's jobs, from figures kept ``ttl`` seconds."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._signals: tuple[float, dict[str, RegionSignals]] | None = None
        self._links: dict[tuple[str, str], Link] = {}
        self._measured: dict[int, tuple[float, _Measured]] = {}

    def decide(
        self, session: Session, jobs: Sequence[JobRow], nodes: Room, now: float
    ) -> dict[int, JobSiting]:
        placed = [job for job in jobs if job.placement and job.id is not None]
        if not placed:
            return {}
        signals = self._load_signals(session)
        measured = self._load_measured(session, [job.id for job in placed if job.id])
        left = dict(session.execute(_LEFT, {"ids": [job.id for job in placed]}).all())
        decided = {}
        for job in placed:
            assert job.id is not None and job.placement is not None
            policy = PlacementPolicy(**job.placement)
            pool_regions = sorted(nodes.region_slots(job.pool))
            regions = {r: signals.get(r, UNKNOWN_SIGNALS) for r in pool_regions}
            seen = measured[job.id]
            traffic = Traffic(
                links_from(seen.home, self._links), seen.scene_bytes, job.frame_count,
                seen.output_bytes,
            )  # fmt: skip
            prefer = rank_regions(
                policy, seen.joules, {r: s.at(now) for r, s in regions.items()}, traffic,
                seen.seconds or job.timeout,
            )  # fmt: skip
            start = self._start(job, policy, now, left, seen, regions, nodes, traffic)
            decided[job.id] = JobSiting(tuple(prefer), start)
        return decided

    def _start(
        self,
        job: JobRow,
        policy: PlacementPolicy,
        now: float,
        left: dict[int, int],
        seen: _Measured,
        regions: dict[str, RegionSignals],
        nodes: Room,
        traffic: Traffic,
    ) -> StartPlan | None:
        if job.deadline is None or job.started_at is not None:
            return None  # work under way is not held back
        assert job.id is not None
        frame_seconds = seen.seconds or job.timeout  # unmeasured: its limit bounds a frame
        region_slots = nodes.region_slots(job.pool)
        slots = sum(region_slots.values())  # its whole pool's
        known = [j for j in seen.joules.values() if j]
        joules = sum(known) / len(known) if known else 1.0
        return plan_start(
            policy, now, job.deadline, int(left.get(job.id, 0)), frame_seconds, slots,
            list(regions.values()), joules, traffic, region_slots,
        )  # fmt: skip

    def _load_signals(self, session: Session) -> dict[str, RegionSignals]:
        if self._signals is None or self.clock() - self._signals[0] > self.ttl:
            self._signals = (self.clock(), load_signals(session))
            self._links = load_links(session)
        return self._signals[1]

    def _load_measured(self, session: Session, ids: list[int]) -> dict[int, _Measured]:
        stale = [i for i in ids if i not in self._measured or self._expired(i)]
        if stale:
            found = {i: _Measured() for i in stale}
            counts: dict[int, list[float]] = {}
            sizes: dict[int, list[float]] = {}
            for job_id, region, joules, seconds, output in session.execute(
                _MEASURED, {"ids": stale}
            ):
                if joules is not None:
                    found[job_id].joules[region] = float(joules)
                if seconds is not None:
                    counts.setdefault(job_id, []).append(float(seconds))
                if output is not None:
                    sizes.setdefault(job_id, []).append(float(output))
            for job_id, sizes_list in sizes.items():
                found[job_id].output_bytes = max(sizes_list)
            for job_id, home, scene in session.execute(_TRAFFIC, {"ids": stale}):
                found[job_id].home = home
                found[job_id].scene_bytes = float(scene or 0)
            for job_id, seconds_list in counts.items():
                found[job_id].seconds = max(seconds_list)
            for job_id, value in found.items():
                self._measured[job_id] = (self.clock(), value)
        if len(self._measured) > 4 * max(1, len(ids)) + 1000:  # forget finished jobs'
            self._measured = {i: self._measured[i] for i in ids}
        return {i: self._measured[i][1] for i in ids}

    def _expired(self, job_id: int) -> bool:
        return self.clock() - self._measured[job_id][0] > self.ttl


def waiting_message(plan: StartPlan, zone: dt.tzinfo) -> str:
    """Why a job waits and when it starts: "waits for a 75% cheaper window: starts at
    23:00, by 02:10 at the latest to meet its deadline" (the farm's billing time zone)."""
    start = dt.datetime.fromtimestamp(plan.start, zone)
    text = f"{plan.reason}: starts at {start:%Y-%m-%d %H:%M %Z}"
    if plan.latest is not None:
        latest = dt.datetime.fromtimestamp(plan.latest, zone)
        text += f", by {latest:%Y-%m-%d %H:%M} at the latest to meet its deadline"
    return text
