"""Every Prometheus metric of the farm, declared once.

Two kinds:

- *farm totals* come from the database at scrape time (``FarmCollector``, registered
  by the API's /metrics), so they are right whichever process restarted and however
  many API replicas answer;
- *process metrics* (scheduler tick duration, events ingested, chunks dispatched)
  live in the process that does the work and are served by it.

Names: ``renderfarm_`` prefix, base units, ``_total`` counters, labels with few
values (pool, state), never a job or frame id.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Histogram
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

from scheduler.core.states import ChunkState, JobState
from scheduler.db import ChunkRow, FrameResultRow, JobRow, NodeRow

RENDER_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# Scheduler process metrics.
TICK_SECONDS = Histogram(
    "renderfarm_scheduler_tick_seconds",
    "Time of one scheduler loop turn: ingest, dispatch, reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS_INGESTED = Counter(
    "renderfarm_scheduler_events_ingested_total", "Node events that changed the farm's state."
)
EVENTS_IGNORED = Counter(
    "renderfarm_scheduler_events_ignored_total",
    "Node events ignored as duplicates or from superseded attempts.",
)
CHUNKS_DISPATCHED = Counter(
    "renderfarm_scheduler_chunks_dispatched_total", "Chunk attempts sent to node queues."
)


class FarmCollector(Collector):
    """Farm-wide figures read from the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from self._frames(session)
            yield from self._chunks(session)
            yield from self._jobs(session)
            yield from self._nodes(session)

    def _frames(self, session: Session) -> Iterator[Metric]:
        rendered = CounterMetricFamily(
            "renderfarm_frames_rendered", "Frames rendered, each counted once.", labels=["pool"]
        )
        seconds = HistogramMetricFamily(
            "renderfarm_frame_render_seconds", "Render time of each frame.", labels=["pool"]
        )
        cpu = CounterMetricFamily(
            "renderfarm_frame_cpu_seconds", "CPU time spent rendering frames.", labels=["pool"]
        )
        bucket_columns = [
            func.sum(case((col(FrameResultRow.render_seconds) <= bound, 1), else_=0))
            for bound in RENDER_SECONDS_BUCKETS
        ]
        rows = session.execute(
            select(
                col(FrameResultRow.pool),
                func.count(),
                func.sum(FrameResultRow.render_seconds),
                func.sum(FrameResultRow.cpu_seconds),
                *bucket_columns,
            ).group_by(col(FrameResultRow.pool))
        ).all()
        for row in rows:
            pool, count, total_seconds, total_cpu = row[:4]
            buckets: tuple[int | None, ...] = tuple(row[4:])
            rendered.add_metric([pool], count)
            cpu.add_metric([pool], total_cpu or 0.0)
            seconds.add_metric(
                [pool],
                [
                    (str(bound), int(n or 0))
                    for bound, n in zip(RENDER_SECONDS_BUCKETS, buckets, strict=True)
                ]
                + [("+Inf", count)],
                sum_value=total_seconds or 0.0,
            )
        yield from (rendered, seconds, cpu)

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
                select(col(ChunkRow.pool), col(ChunkRow.state), func.count()).group_by(
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
        for pool, state, n, total_slots, running in session.execute(
            select(
                col(NodeRow.pool),
                col(NodeRow.state),
                func.count(),
                func.sum(NodeRow.slots),
                func.sum(NodeRow.running),
            ).group_by(col(NodeRow.pool), col(NodeRow.state))
        ):
            nodes.add_metric([pool, state], n)
            if state == "online":
                slots.add_metric([pool], total_slots or 0)
                busy.add_metric([pool], running or 0)
        yield from (nodes, slots, busy)
