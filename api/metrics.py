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
up. The figures are at most ``max_age`` old, well under any scrape interval.
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
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS
from scheduler.core.states import ChunkState, JobState
from scheduler.db import AttemptRow, ChunkRow, FrameResultRow, JobRow, NodeRow
from scheduler.db.engine import read_only


class FarmCollector(Collector):
    """Farm-wide figures read from the database, at most once per ``max_age`` seconds."""

    def __init__(
        self,
        engine: Engine,
        currency: str = "CNY",
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = read_only(engine)
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
                *self._chunks(session),
                *self._jobs(session),
                *self._nodes(session),
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
        joules = col(FrameResultRow.it_joules)
        group = (
            col(FrameResultRow.pool),
            col(FrameResultRow.region),
            col(FrameResultRow.energy_method),
        )
        rows = session.execute(
            select(
                *group,
                func.count(),
                func.count(joules),
                func.sum(FrameResultRow.render_seconds),
                func.sum(FrameResultRow.cpu_seconds),
                func.sum(joules),
                func.sum(FrameResultRow.facility_joules),
                func.sum(FrameResultRow.cost),
                func.sum(FrameResultRow.co2_grams),
                *_buckets(col(FrameResultRow.render_seconds), RENDER_SECONDS_BUCKETS),
                *_buckets(joules, ENERGY_JOULES_BUCKETS),
            ).group_by(*group)
        ).all()
        by_place: dict[tuple[str, str], _Sums] = {}
        split = 11 + len(RENDER_SECONDS_BUCKETS)
        for row in rows:
            pool, region, method, count, metered = row[:5]
            place = by_place.setdefault((pool, region), _Sums(len(RENDER_SECONDS_BUCKETS)))
            place.add(row[5:11], row[11:split], count)
            rendered.add_metric([pool, region, method or "none"], count)
            if metered:
                energy.add_metric(
                    [pool, region, method],
                    _histogram(ENERGY_JOULES_BUCKETS, row[split:], metered),
                    sum_value=row[7] or 0.0,
                )
        for (pool, region), place in by_place.items():
            seconds.add_metric(
                [pool, region],
                _histogram(RENDER_SECONDS_BUCKETS, place.seconds_buckets, place.count),
                sum_value=place.render_seconds,
            )
            cpu.add_metric([pool, region], place.cpu_seconds)
            it.add_metric([pool, region], place.it_joules)
            facility.add_metric([pool, region], place.facility_joules)
            cost.add_metric([pool, region, self.currency], place.cost)
            co2.add_metric([pool, region], place.co2_grams)
        yield from (rendered, seconds, cpu, energy, it, facility, cost, co2)

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
        state = col(AttemptRow.state)
        for pool, n_failed, n_ended, wasted, used in session.execute(
            select(
                col(AttemptRow.pool),
                func.sum(case((state == "failed", 1), else_=0)),
                func.sum(case((state.in_(("failed", "done")), 1), else_=0)),
                func.sum(case((state == "failed", AttemptRow.energy_joules), else_=0.0)),
                func.sum(case((state == "done", AttemptRow.energy_joules), else_=0.0)),
            ).group_by(col(AttemptRow.pool))
        ):
            failed.add_metric([pool], n_failed or 0)
            ended.add_metric([pool], n_ended or 0)
            energy.add_metric([pool, "failed"], wasted or 0.0)
            energy.add_metric([pool, "done"], used or 0.0)
        yield from (failed, ended, energy)

    def _chunks(self, session: Session) -> Iterator[Metric]:
        chunks = GaugeMetricFamily(
            "renderfarm_chunks", "Chunks by pool and state.", labels=["pool", "state"]
        )
        depth = GaugeMetricFamily(
            "renderfarm_queue_depth",
            "Chunks waiting for a render slot (queued in the farm or sent to a node queue).",
            labels=["pool"],
        )
        counts: dict[tuple[str, str], int] = {
            (pool, state): n
            for pool, state, n in session.execute(
                select(col(ChunkRow.pool), col(ChunkRow.state), func.sum(ChunkRow.chunks)).group_by(
                    col(ChunkRow.pool), col(ChunkRow.state)
                )
            )
        }
        for pool in {p for p, _ in counts}:
            for state in ChunkState:
                chunks.add_metric([pool, state.value], counts.get((pool, state), 0))
            depth.add_metric(
                [pool],
                counts.get((pool, ChunkState.QUEUED), 0)
                + counts.get((pool, ChunkState.DISPATCHED), 0),
            )
        yield from (chunks, depth)

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
        online: dict[str, list[int]] = {}
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
            counts = online.setdefault(pool, [0, 0, 0, 0])  # lost, online, slots, busy
            counts[state == "online"] += n
            if state == "online":
                counts[2] += total_slots or 0
                counts[3] += running or 0
                power.add_metric([pool, region], watts or 0.0)
        for pool, (lost, up, total_slots, running) in online.items():
            nodes.add_metric([pool, "lost"], lost)
            nodes.add_metric([pool, "online"], up)
            slots.add_metric([pool], total_slots)
            busy.add_metric([pool], running)
        yield from (nodes, slots, busy, power)


def _buckets(column: Any, bounds: tuple[float, ...]) -> list[Any]:
    """SQL sums counting the rows whose ``column`` is at most each bound."""
    return [func.sum(case((column <= bound, 1), else_=0)) for bound in bounds]


def _histogram(
    bounds: tuple[float, ...], counts: Sequence[Any], total: int
) -> Sequence[tuple[str, float]]:
    return [(str(b), int(n or 0)) for b, n in zip(bounds, counts, strict=True)] + [("+Inf", total)]


class _Sums:
    """Frame figures of one (pool, region), summed over energy methods."""

    def __init__(self, buckets: int) -> None:
        self.count = 0
        self.render_seconds = self.cpu_seconds = self.it_joules = 0.0
        self.facility_joules = self.cost = self.co2_grams = 0.0
        self.seconds_buckets = [0] * buckets

    def add(self, sums: Sequence[Any], seconds_buckets: Sequence[Any], count: int) -> None:
        render, cpu, it, facility, cost, co2 = (float(v or 0.0) for v in sums)
        self.count += count
        self.render_seconds += render
        self.cpu_seconds += cpu
        self.it_joules += it
        self.facility_joules += facility
        self.cost += cost
        self.co2_grams += co2
        self.seconds_buckets = [
            a + int(b or 0) for a, b in zip(self.seconds_buckets, seconds_buckets, strict=True)
        ]
