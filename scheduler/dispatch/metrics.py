"""The scheduler process's Prometheus metrics, served by ``renderfarm scheduler
--metrics-port``: turn and dispatch tick durations, dispatch latency, events ingested
and ignored.

Names follow the farm's rule (see api/metrics.py): ``renderfarm_`` prefix, base units.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TICK_SECONDS = Histogram(
    "renderfarm_scheduler_tick_seconds",
    "Time of one scheduler loop turn: ingest, dispatch, reconcile.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DISPATCH_SECONDS = Histogram(
    "renderfarm_scheduler_dispatch_seconds",
    "Time of one dispatch tick: read the nodes and queues, decide, claim, commit.",
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
MESSAGES_DISPATCHED = Counter(
    "renderfarm_scheduler_messages_dispatched_total",
    "Celery messages the chunk attempts went in: fewer than the attempts where chunks "
    "of milliseconds travel several to a message.",
)
DISPATCH_LATENCY = Histogram(
    "renderfarm_dispatch_latency_seconds",
    "Time from the scheduler sending a chunk attempt to a node starting it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
