"""A render node's Prometheus metrics (``renderfarm_worker_*``): the node's power and
metered energy, its frames and their energy.

They live in ``WORKER_REGISTRY``, are set only in the worker's main process (its energy
ledger, workers/energy.py) and are served by ``renderfarm worker --metrics-port``;
prefork children never touch them, so no multiprocess mode. Importing this module loads
no database package: nodes never touch the database.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scheduler.core.buckets import ENERGY_JOULES_BUCKETS, RENDER_SECONDS_BUCKETS

# Worker metrics: set by the node's energy ledger in the worker's main process.
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
_NODE = ["pool", "region"]
WORKER_POWER = Gauge(
    "renderfarm_worker_power_watts",
    "IT power of this node over its last sampling interval.",
    [*_NODE, "method"],
    registry=WORKER_REGISTRY,
)
WORKER_ENERGY = Counter(
    "renderfarm_worker_energy_joules",
    "IT energy this node's meter measured (or its power model estimated).",
    [*_NODE, "method"],
    registry=WORKER_REGISTRY,
)
WORKER_UNATTRIBUTED = Counter(
    "renderfarm_worker_unattributed_energy_joules",
    "This node's energy no frame carries: idle power of unused slots, and idle time.",
    [*_NODE, "method"],
    registry=WORKER_REGISTRY,
)
WORKER_FRAMES = Counter(
    "renderfarm_worker_frames_rendered",
    "Frames this node rendered (an attempt that later fails is counted too).",
    [*_NODE, "method"],
    registry=WORKER_REGISTRY,
)
WORKER_FRAME_ENERGY = Histogram(
    "renderfarm_worker_frame_energy_joules",
    "IT energy of each frame this node rendered.",
    [*_NODE, "method"],
    buckets=ENERGY_JOULES_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_FRAME_SECONDS = Histogram(
    "renderfarm_worker_frame_render_seconds",
    "Render time of each frame this node rendered.",
    _NODE,
    buckets=RENDER_SECONDS_BUCKETS,
    registry=WORKER_REGISTRY,
)
WORKER_SLOTS_BUSY = Gauge(
    "renderfarm_worker_slots_busy",
    "Render slots of this node rendering now.",
    _NODE,
    registry=WORKER_REGISTRY,
)
