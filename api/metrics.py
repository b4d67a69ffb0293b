"""The API process's Prometheus metrics: farm totals read from the database at scrape time.

Each process declares its own metrics in one module: this one (the API's /metrics),
scheduler/dispatch/metrics.py (the scheduler) and workers/metrics.py (a node).

The farm's metrics are of three kinds:

- *farm totals* (here) come from the database at scrape time (``FarmCollector``, registered
  by the API's /metrics), so they are right whichever process restarted and however
  many API replicas answer: frames, render time, energy, cost and CO2, chunks, jobs,
  nodes and their power. One scrape target is enough for the dashboard's core panels;
- *scheduler metrics* (tick duration, dispatch latency, events) live in the scheduler
  and are served by ``renderfarm scheduler --metrics-port``;
- *worker metrics* (``renderfarm_worker_*``) live in each node's ``WORKER_REGISTRY``
  and are served by ``renderfarm worker --metrics-port``.

Names: ``renderfarm_`` prefix, base units (seconds, joules, grams, watts), ``_total``
counters, labels with few values (pool, region, method, state), never a job, frame
or node name (Prometheus adds the target's ``instance``).

A scrape's cost is bounded whoever scrapes: the farm totals are read at most once per
``max_age`` seconds per process (one read at a time; scrapes meanwhile get its figures),
in a read-only transaction that never waits for the database's writers nor holds them
up. The figures are at most ``max_age`` old, well under any scrape interval. The frame
figures are running totals (``frame_totals``, scheduler/core/rollups.py) kept with the
frames, and chunks are counted in unfinished states only (an index range), so neither
grows with the history; nor do the attempt counters (``attempt_totals``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS
from scheduler.core.demand import slots_for_deadline
from scheduler.core.rollups import UNMETERED, bucket
from scheduler.core.states import ACTIVE_CHUNK_STATES, ChunkState, JobState
from scheduler.db import (
    AttemptTotal,
    ChunkRow,
    FrameResultRow,
    FrameTotal,
    JobDependency,
    JobRow,
    NodeRow,
)
from scheduler.db.among import among
from scheduler.db.engine import read_only

# A node's states (nodes.state): its own say (scheduler/wire/messages.py NodeLife, which
# this layer does not import), or lost.
NODE_STATES = ("online", "leaving", "left", "lost")


class FarmCollector(Collector):
    """Farm-wide figures read from the database, at most once per ``max_age`` seconds."""

    def __init__(
        self,
        engine: Engine,
        currency: str = "CNY",
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.engine = read_only(engine)
        self.wall = wall  # deadlines and retries' back-off are wall-clock times
        self.currency = currency
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._figures: list[Metric] = []
        self._read_at: float | None = None

    def describe(self) -> list[Metric]:
        """Nothing: registering the collector must not read the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes wait for one read, not one read each
            if self._read_at is None or self.clock() - self._read_at >= self.max_age:
                self._figures = self._read()
                self._read_at = self.clock()
            figures = self._figures
        yield from figures

    def _read(self) -> list[Metric]:
        with Session(self.engine) as session:
            return [
                *self._frames(session),
                *self._failures(session),
                *self._chunks(unfinished := _unfinished(session)),
                *self._jobs(session),
                *self._nodes(session),
                *self._demand(session, unfinished),
            ]

    def _frames(self, session: Session) -> Iterator[Metric]:
        where = ["pool", "region"]
        rendered = CounterMetricFamily(
            "renderfarm_frames_rendered",
            "Frames rendered, each counted once.",
            labels=[*where, "method"],
        )
        seconds = HistogramMetricFamily(
            "renderfarm_frame_render_seconds", "Render time of each frame.", labels=where
        )
        cpu = CounterMetricFamily(
            "renderfarm_frame_cpu_seconds", "CPU time spent rendering frames.", labels=where
        )
        energy = HistogramMetricFamily(
            "renderfarm_frame_energy_joules",
            "IT energy of each metered frame, by how it was obtained (rapl, nvml, model).",
            labels=[*where, "method"],
        )
        it = CounterMetricFamily(
            "renderfarm_it_energy_joules", "IT energy of the frames rendered.", labels=where
        )
        facility = CounterMetricFamily(
            "renderfarm_facility_energy_joules",
            "Facility energy of the frames rendered: IT energy x the region's PUE.",
            labels=where,
        )
        cost = CounterMetricFamily(
            "renderfarm_energy_cost",
            "Cost of the facility energy of the frames rendered, in the farm's currency.",
            labels=[*where, "currency"],
        )
        co2 = CounterMetricFamily(
            "renderfarm_carbon_dioxide_grams",
            "Grid CO2 emitted for the facility energy of the frames rendered.",
            labels=where,
        )
        saved = {
            name: GaugeMetricFamily(
                f"renderfarm_placement_saved_{metric}",
                f"{what} saved by placement against rendering the same frames at once in "
                "their studios' home regions (negative where it cost more).",
                labels=[*where, "currency"] if name == "cost" else where,
            )
            for name, metric, what in (
                ("facility_joules", "facility_energy_joules", "Facility energy"),
                ("cost", "energy_cost", "Energy cost"),
                ("co2_grams", "carbon_dioxide_grams", "Grid CO2"),
            )
        }
        # Running totals (scheduler/core/rollups.py): a few rows per (pool, region,
        # method), whatever the number of frames ever rendered.
        totals: dict[tuple[str, str, str], dict[str, float]] = {}
        for pool, region, method, measure, value in session.execute(_FRAME_TOTALS):
            totals.setdefault((pool, region, method), {})[measure] = value
        by_place: dict[tuple[str, str], dict[str, float]] = {}
        for (pool, region, method), measures in sorted(totals.items()):
            place = by_place.setdefault((pool, region), {})
            for measure, value in measures.items():
                place[measure] = place.get(measure, 0.0) + value
            rendered.add_metric([pool, region, method or "none"], measures.get("frames", 0.0))
            if method != UNMETERED:
                energy.add_metric(
                    [pool, region, method],
                    _histogram(ENERGY_JOULES_BUCKETS, "it_joules", measures, "metered"),
                    sum_value=measures.get("it_joules", 0.0),
                )
        for (pool, region), place in by_place.items():
            seconds.add_metric(
                [pool, region],
                _histogram(RENDER_SECONDS_BUCKETS, "render_seconds", place, "frames"),
                sum_value=place.get("render_seconds", 0.0),
            )
            cpu.add_metric([pool, region], place.get("cpu_seconds", 0.0))
            it.add_metric([pool, region], place.get("it_joules", 0.0))
            facility.add_metric([pool, region], place.get("facility_joules", 0.0))
            cost.add_metric([pool, region, self.currency], place.get("cost", 0.0))
            co2.add_metric([pool, region], place.get("co2_grams", 0.0))
            for name, family in saved.items():
                labels = [pool, region, self.currency] if name == "cost" else [pool, region]
                family.add_metric(labels, place.get(f"saved_{name}", 0.0))
        yield from (rendered, seconds, cpu, energy, it, facility, cost, co2, *saved.values())

    def _failures(self, session: Session) -> Iterator[Metric]:
        failed = CounterMetricFamily(
            "renderfarm_attempts_failed",
            "Chunk attempts that failed (a renderer error, a time limit, a lost node).",
            labels=["pool"],
        )
        ended = CounterMetricFamily(
            "renderfarm_attempts_ended", "Chunk attempts that ended, either way.", labels=["pool"]
        )
        energy = CounterMetricFamily(
            "renderfarm_attempt_energy_joules",
            "IT energy of ended attempts by outcome: what failed attempts used is energy wasted.",
            labels=["pool", "state"],
        )
        totals: dict[str, dict[str, float]] = {}
        for pool, measure, value in session.execute(_ATTEMPT_TOTALS):  # running totals
            totals.setdefault(pool, {})[measure] = value
        for pool, measures in sorted(totals.items()):
            failed.add_metric([pool], measures.get("failed", 0.0))
            ended.add_metric([pool], measures.get("ended", 0.0))
            energy.add_metric([pool, "failed"], measures.get("joules_failed", 0.0))
            energy.add_metric([pool, "done"], measures.get("joules_done", 0.0))
        yield from (failed, ended, energy)

    def _chunks(self, unfinished: dict[tuple[str, str], tuple[int, int]]) -> Iterator[Metric]:
        chunks = GaugeMetricFamily(
            "renderfarm_chunks",
            "Unfinished chunks by pool and state (finished work is in the counters).",
            labels=["pool", "state"],
        )
        depth = GaugeMetricFamily(
            "renderfarm_queue_depth",
            "Chunks waiting for a render slot (queued in the farm or sent to a node queue).",
            labels=["pool"],
        )
        counts = {key: n for key, (n, _frames) in unfinished.items()}
        for pool in {p for p, _ in counts}:
            for state in UNFINISHED:
                chunks.add_metric([pool, state.value], counts.get((pool, state), 0))
            depth.add_metric(
                [pool],
                counts.get((pool, ChunkState.QUEUED), 0)
                + counts.get((pool, ChunkState.DISPATCHED), 0),
            )
        yield from (chunks, depth)

    def _demand(
        self, session: Session, unfinished: dict[tuple[str, str], tuple[int, int]]
    ) -> Iterator[Metric]:
        """What an autoscaler should read (scheduler/core/demand.py), per pool."""
        waiting = GaugeMetricFamily(
            "renderfarm_pool_frames_waiting",
            "Frames of unfinished chunks not rendering yet (queued in the farm or sent).",
            labels=["pool"],
        )
        now_slots = GaugeMetricFamily(
            "renderfarm_pool_slots_wanted",
            "Render slots the pool could fill now: chunks sent or rendering, and queued "
            "chunks of jobs that wait for nothing.",
            labels=["pool"],
        )
        deadline_slots = GaugeMetricFamily(
            "renderfarm_pool_deadline_slots",
            "Render slots the pool needs from now to finish every job with a deadline on "
            "time, at each job's measured pace (all its chunks while unmeasured or late).",
            labels=["pool"],
        )
        now = self.wall()
        frames: dict[str, int] = {}
        for (pool, state), (_chunks, n) in unfinished.items():
            if state in (ChunkState.QUEUED, ChunkState.DISPATCHED):
                frames[pool] = frames.get(pool, 0) + n
        wanted = {pool: int(n or 0) for pool, n in session.execute(_demand_now(now))}
        left = session.execute(_DEADLINE_LEFT).all()
        pace = dict(session.execute(_PACE, {"ids": [row[0] for row in left]}).all())
        needed: dict[str, int] = {}
        for job_id, pool, deadline, frames_left, chunks_left in left:
            seconds = pace.get(job_id)
            needed[pool] = needed.get(pool, 0) + slots_for_deadline(
                int(frames_left or 0), int(chunks_left or 0),
                float(seconds) if seconds is not None else None, deadline - now,
            )  # fmt: skip
        for pool in sorted({*frames, *wanted, *needed}):
            waiting.add_metric([pool], frames.get(pool, 0))
            now_slots.add_metric([pool], wanted.get(pool, 0))
            deadline_slots.add_metric([pool], needed.get(pool, 0))
        yield from (waiting, now_slots, deadline_slots)

    def _jobs(self, session: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("renderfarm_jobs", "Jobs by state.", labels=["state"])
        counts: dict[str, int] = {
            state: n
            for state, n in session.execute(
                select(col(JobRow.state), func.count()).group_by(col(JobRow.state))
            )
        }
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs

    def _nodes(self, session: Session) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "renderfarm_nodes", "Render nodes by pool and state.", labels=["pool", "state"]
        )
        slots = GaugeMetricFamily(
            "renderfarm_node_slots", "Render slots of online nodes.", labels=["pool"]
        )
        busy = GaugeMetricFamily(
            "renderfarm_node_slots_busy", "Render slots in use on online nodes.", labels=["pool"]
        )
        power = GaugeMetricFamily(
            "renderfarm_node_power_watts",
            "IT power of online nodes, as their last heartbeats reported it.",
            labels=["pool", "region"],
        )
        by_state: dict[str, dict[str, int]] = {}  # pool -> state -> nodes
        online: dict[str, list[int]] = {}  # pool -> [slots, busy] of its online nodes
        for pool, region, state, n, total_slots, running, watts in session.execute(
            select(
                col(NodeRow.pool),
                col(NodeRow.region),
                col(NodeRow.state),
                func.count(),
                func.sum(NodeRow.slots),
                func.sum(NodeRow.running),
                func.sum(NodeRow.power_watts),
            ).group_by(col(NodeRow.pool), col(NodeRow.region), col(NodeRow.state))
        ):
            states = by_state.setdefault(pool, dict.fromkeys(NODE_STATES, 0))
            states[state] = states.get(state, 0) + n
            if state == "online":
                counts = online.setdefault(pool, [0, 0])
                counts[0] += total_slots or 0
                counts[1] += running or 0
                power.add_metric([pool, region], watts or 0.0)
        for pool, states in by_state.items():
            for state, n in states.items():
                nodes.add_metric([pool, state], n)
            total_slots, running = online.get(pool, (0, 0))
            slots.add_metric([pool], total_slots)
            busy.add_metric([pool], running)
        yield from (nodes, slots, busy, power)


def _histogram(
    bounds: tuple[float, ...], measure: str, totals: dict[str, float], count: str
) -> Sequence[tuple[str, float]]:
    """Cumulative buckets of ``measure`` from the running totals, and +Inf."""
    return [(str(b), int(totals.get(bucket(measure, b), 0))) for b in bounds] + [
        ("+Inf", int(totals.get(count, 0)))
    ]


_ATTEMPT_TOTALS = select(col(AttemptTotal.pool), col(AttemptTotal.measure), col(AttemptTotal.value))
UNFINISHED = tuple(state for state in ChunkState if not state.is_final)


DependedOn = aliased(JobRow)
_WAITING_ON = (  # a job some of whose dependencies are not done yet
    select(col(JobDependency.job_id))
    .join(DependedOn, col(DependedOn.id) == col(JobDependency.depends_on))
    .where(col(DependedOn.state) != JobState.DONE)
)
# Jobs whose chunks may take a slot once there is one: not final, not suspended, not
# waiting for another job. Read from states, not from the reasons the dispatch wrote on
# held jobs: a pool scaled to none has no dispatch to clear them, and stayed at none.
_RUNNABLE = (
    col(JobRow.state).in_((JobState.QUEUED, JobState.RUNNING))
    & col(JobRow.suspended).is_(False)
    & col(JobRow.id).not_in(_WAITING_ON)
)


def _unfinished(session: Session) -> dict[tuple[str, str], tuple[int, int]]:
    """Unfinished chunks and their frames by (pool, state): one read for every figure of
    a scrape that needs them (an index range, not the history)."""
    return {
        (pool, state): (int(n or 0), int(frames or 0))
        for pool, state, n, frames in session.execute(
            select(
                col(ChunkRow.pool), col(ChunkRow.state), func.sum(ChunkRow.chunks),
                func.sum(ChunkRow.frame_count),
            )
            .where(col(ChunkRow.state).in_(UNFINISHED))
            .group_by(col(ChunkRow.pool), col(ChunkRow.state))
        )
    }  # fmt: skip


def _demand_now(now: float) -> Any:
    """Chunks per pool that could take a slot at once: sent or rendering, and queued
    of runnable jobs past any retry's back-off (scheduler/core/demand.py)."""
    queued_now = (
        (col(ChunkRow.state) == ChunkState.QUEUED)
        & _RUNNABLE
        & (col(ChunkRow.not_before).is_(None) | (col(ChunkRow.not_before) <= now))
    )
    return (
        select(col(ChunkRow.pool), func.sum(ChunkRow.chunks))
        .join(JobRow, col(JobRow.id) == col(ChunkRow.job_id))
        .where(col(ChunkRow.state).in_(ACTIVE_CHUNK_STATES) | queued_now)
        .group_by(col(ChunkRow.pool))
    )


# Runnable jobs with a deadline still to render: frames and chunks left.
_DEADLINE_LEFT = (
    select(
        col(JobRow.id), col(JobRow.pool), col(JobRow.deadline),
        func.sum(ChunkRow.frame_count), func.sum(ChunkRow.chunks),
    )
    .join(ChunkRow, col(ChunkRow.job_id) == col(JobRow.id))
    .where(col(JobRow.deadline).is_not(None), _RUNNABLE, col(ChunkRow.state).in_(UNFINISHED))
    .group_by(col(JobRow.id), col(JobRow.pool), col(JobRow.deadline))
)  # fmt: skip
_PACE = (
    select(col(FrameResultRow.job_id), func.avg(FrameResultRow.render_seconds))
    .where(among(col(FrameResultRow.job_id), "ids"))
    .group_by(col(FrameResultRow.job_id))
)
_FRAME_TOTALS = select(
    col(FrameTotal.pool), col(FrameTotal.region), col(FrameTotal.method),
    col(FrameTotal.measure), col(FrameTotal.value),
)  # fmt: skip
