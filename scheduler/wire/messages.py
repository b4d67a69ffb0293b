"""What travels between the scheduler and the render nodes, as plain JSON dicts.

Scheduler -> node: a ``ChunkMessage``, the only argument of the Celery task
``renderfarm.render_chunk``. It carries everything needed to render (the node never
reads the database): chunk id, attempt number, frames, renderer and settings, the
paths relative to the storage root, and the time limit.

Node -> scheduler: events on the durable queue ``renderfarm.events``, keyed by
(chunk id, attempt) so that ingesting one twice, or one from a superseded attempt,
changes nothing. Kinds:

- ``started``   the attempt began on ``node``;
- ``frame``     one frame is written: ``result`` = FrameReport;
- ``finished``  the attempt succeeded: ``results`` = every frame's FrameReport;
- ``failed``    the attempt failed: ``error``, ``exit_code``, ``energy_joules``;

Chunk events also carry the node's ``region``, where its frames are billed.
- ``heartbeat`` a node is alive: ``info`` = NodeReport (no chunk, no attempt).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RENDER_TASK = "renderfarm.render_chunk"
EVENTS_QUEUE = "renderfarm.events"


def pool_queue(pool: str) -> str:
    return f"pool.{pool}"


def node_queue(node: str) -> str:
    return f"node.{node}"


def task_id_for(chunk_id: int, attempt: int) -> str:
    """Celery task ids are derived, so the scheduler can revoke an attempt by id alone."""
    return f"chunk-{chunk_id}-attempt-{attempt}"


def output_pattern_for(job_id: int) -> str:
    return f"jobs/{job_id}/frames/frame_{{frame}}.png"


def attempt_log_path(job_id: int, chunk_id: int, attempt: int) -> str:
    return f"jobs/{job_id}/logs/chunk-{chunk_id}-attempt-{attempt}.log"


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    chunk_id: int
    attempt: int
    job_id: int
    pool: str
    frames: list[int]
    renderer: str
    settings: dict[str, Any]
    output_pattern: str  # relative to storage; "{frame}" is replaced by the frame number
    log_path: str  # relative to storage
    timeout: float  # render time limit per frame, seconds
    stall_timeout: float | None = None  # longest silence (no output) allowed, seconds
    node: str | None = None  # the node it was placed on; None: any node of the pool

    @property
    def queue(self) -> str:
        return node_queue(self.node) if self.node else pool_queue(self.pool)

    def output_for(self, frame: int) -> str:
        return self.output_pattern.replace("{frame}", f"{frame:06d}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkMessage:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class FrameReport:
    frame: int
    output: str | None  # relative to storage; None for renderers that write nothing
    render_seconds: float
    cpu_seconds: float
    energy_joules: float | None = None  # IT energy the node metered for it; None: unmetered
    energy_method: str | None = None  # rapl, nvml, model, or a sum such as "rapl+nvml"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameReport:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class NodeReport:
    name: str
    pool: str
    hostname: str
    slots: int
    running: int
    cores: int
    memory_bytes: int
    gpus: int = 0
    tags: list[str] = field(default_factory=list)
    region: str = ""
    energy_method: str | None = None  # None: the node does not meter energy
    power_watts: float = 0.0  # IT power over the node's last sampling interval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeReport:
        return cls(**data)
